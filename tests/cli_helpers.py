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
