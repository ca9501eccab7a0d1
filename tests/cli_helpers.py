"""What the bad-input tests assert of the command line: one line, the cause named, the exit code, never a trace."""

from __future__ import annotations

from typer.testing import CliRunner

from ppp_audit.cli import app

runner = CliRunner()


def fails(args: list, cause: str, code: int = 2) -> str:
    """Run the CLI; it must exit with ``code`` after exactly one error line containing ``cause``, and no trace."""
    result = runner.invoke(app, [str(arg) for arg in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("ppp-audit: error:"), result.stderr
    assert cause in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def run_without_torch(args: list, env: dict | None = None, heavy: tuple[str, ...] = ("torch", "timm", "matplotlib")):
    """Run ``ppp-audit ARGS`` in a fresh Python process and check it never imported torch, timm or matplotlib (or
    the modules named in ``heavy``: the leaderboard's scatter is matplotlib's).

    Returns:
        The ``subprocess.CompletedProcess``; its stdout ends with ``exit CODE`` (the command's exit status).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    import ppp_audit

    code = (
        "import sys\n"
        "from ppp_audit.cli import main\n"
        f"sys.argv = ['ppp-audit', *{[str(arg) for arg in args]!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        f"heavy = [m for m in {tuple(heavy)!r} if m in sys.modules]\n"
        "assert heavy == [], heavy\n"
    )
    source = str(Path(ppp_audit.__file__).parents[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": source, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc
