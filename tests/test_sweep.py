"""``ppp-audit sweep``: resumable, isolated, sharded (docs/leaderboard.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import fails, runner
from ppp_audit.cli import app
from ppp_audit.config import AuditConfig
from ppp_audit.errors import PPPAuditError
from ppp_audit.report import Report
from ppp_audit.runs import CLAIM, DONE, FAILED, iter_records, read_record, run_folder
from ppp_audit.launch import sweep_share
from ppp_audit.sweep import expand_models, model_family, run_sweep, shard, sweep_settings

MODELS = ["test_resnet", "test_efficientnet", "test_byobnet"]
SETTINGS = ["--no-pretrained", "-p", "reflect", "-n", "2", "-b", "2", "--input-size", "64", "--device", "cpu",
            "--no-pages", "--no-progress"]


def _settings() -> dict:
    return sweep_settings(AuditConfig(model="sweep", pretrained=False, paddings=["reflect"], num_images=2,
                                      batch_size=2, input_size=64, device="cpu"))


class FakeRunner:
    """Stands in for the spawned audit: records the models asked for, fails or interrupts where told."""

    def __init__(self, fail: set[str] = frozenset(), interrupt_at: str | None = None, oom: int = 0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail, self.interrupt_at, self.oom = set(fail), interrupt_at, oom

    def __call__(self, config: AuditConfig, folder: Path, *, timeout_s: float, pages: bool):
        self.calls.append((config.model, config.batch_size))
        if config.model == self.interrupt_at:
            raise KeyboardInterrupt
        if self.oom:
            self.oom -= 1
            return "oom", "CUDA out of memory"
        if config.model in self.fail:
            return FAILED, f"{config.model} cannot be audited"
        return DONE, None


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep of 3 tiny random-init models through the CLI, one process each."""
    out = tmp_path_factory.mktemp("sweep")
    settings = [arg for arg in SETTINGS if arg != "--no-progress"]  # progress on, in a log: a line per model
    result = runner.invoke(app, ["sweep", *MODELS, *settings, "--out", str(out)])
    return out, result


def test_sweep_writes_one_run_per_model(swept):
    out, result = swept
    assert result.exit_code == 0, result.output
    assert "sweeping 3 models" in result.stderr and "3 done, 0 failed" in result.stderr
    assert all(f"{model}: done in " in result.stderr for model in MODELS)
    records = {record.model: record for record in iter_records(out)}
    assert set(records) == set(MODELS)
    for model, record in records.items():
        assert record.status == DONE and record.family == model_family(model) is not None and record.params > 0
        report = Report.load(record.report_path)
        assert report.model["name"] == model and [r.scheme for r in report.results] == ["native", "reflect"]
        assert record.folder == run_folder(out, model, record.settings)


def test_rerun_skips_what_is_done_and_force_redoes_it(swept):
    out, _ = swept
    again = runner.invoke(app, ["sweep", *MODELS, *SETTINGS, "--out", str(out)])
    assert again.exit_code == 0 and "0 done, 0 failed, 3 already there" in again.stderr
    settings = {**_settings()}
    fake = FakeRunner()
    run_sweep(MODELS, settings, out, audit_runner=fake, force=True)
    assert [model for model, _ in fake.calls] == MODELS


def test_interrupted_sweep_resumes_with_the_models_left(tmp_path):
    settings = _settings()
    first = FakeRunner(interrupt_at=MODELS[1])
    summary = run_sweep(MODELS, settings, tmp_path, audit_runner=first)
    assert summary.interrupted and summary.done == [MODELS[0]]
    assert read_record(run_folder(tmp_path, MODELS[1], settings)) is None  # the model in progress is not recorded
    second = FakeRunner()
    summary = run_sweep(MODELS, settings, tmp_path, audit_runner=second)
    assert [model for model, _ in second.calls] == MODELS[1:] and summary.skipped == [MODELS[0]]


def test_a_failed_model_is_recorded_and_retried_only_when_asked(tmp_path):
    settings = _settings()
    summary = run_sweep(MODELS, settings, tmp_path, audit_runner=FakeRunner(fail={MODELS[0]}))
    assert summary.done == MODELS[1:] and summary.failed == {MODELS[0]: f"{MODELS[0]} cannot be audited"}
    record = read_record(run_folder(tmp_path, MODELS[0], settings))
    assert record.status == FAILED and record.reason == f"{MODELS[0]} cannot be audited"
    assert run_sweep(MODELS, settings, tmp_path, audit_runner=(again := FakeRunner())).skipped == MODELS
    assert again.calls == []
    retried = FakeRunner()
    run_sweep(MODELS, settings, tmp_path, audit_runner=retried, retry_failed=True)
    assert [model for model, _ in retried.calls] == [MODELS[0]]


def test_out_of_memory_retries_with_half_the_batch(tmp_path):
    settings = {**_settings(), "batch_size": 8}
    fake = FakeRunner(oom=2)
    run_sweep(["test_resnet"], settings, tmp_path, audit_runner=fake)
    assert fake.calls == [("test_resnet", 8), ("test_resnet", 4), ("test_resnet", 2)]
    record = read_record(run_folder(tmp_path, "test_resnet", settings))
    assert record.status == DONE and record.attempts == 3 and record.run_settings["batch_size"] == 8


def test_real_failures_are_one_line_and_do_not_stop_the_sweep(tmp_path):
    # a pure transformer has no padding (refused), and a model over its time limit is stopped
    result = runner.invoke(app, ["sweep", "test_vit", "test_resnet", *SETTINGS, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    records = {record.model: record for record in iter_records(tmp_path)}
    assert records["test_resnet"].status == DONE
    assert records["test_vit"].status == FAILED and "has no padding" in records["test_vit"].reason
    assert "\n" not in records["test_vit"].reason
    slow = runner.invoke(app, ["sweep", "test_convnext", *SETTINGS, "--timeout", "0.5", "--out", str(tmp_path / "t")])
    (record,) = iter_records(tmp_path / "t")
    assert slow.exit_code == 0 and record.status == FAILED and record.reason == "over the time limit of 0.5 s"


def test_two_ranks_cover_every_model_once_and_equal_one_rank(swept, tmp_path, monkeypatch):
    single, _ = swept
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        result = runner.invoke(app, ["sweep", *MODELS, *SETTINGS, "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert f"rank {rank} of 2" in result.stderr
    records = list(iter_records(tmp_path))
    assert sorted(r.model for r in records) == sorted(MODELS)
    assert {r.model: r.rank for r in records} == {m: i % 2 for i, m in enumerate(MODELS)}
    for record in records:
        mine = Report.load(record.report_path)
        theirs = Report.load(run_folder(single, record.model, record.settings) / "report.json")
        for a, b in zip(mine.results, theirs.results):
            assert [x.stats.strength for x in a.layers] == [y.stats.strength for y in b.layers]


def test_shards_are_disjoint_and_cover_all():
    models = [f"m{i}" for i in range(7)]
    parts = [shard(models, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == sorted(models) and sum(len(p) for p in parts) == len(models)


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)), ({"RANK": "1", "WORLD_SIZE": "4"}, (1, 4)), ({"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}, (2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (3, 4)),
])
def test_rank_variables(env, expected, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID",
                 "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sweep_share() == expected


def test_bad_rank_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PPPAuditError, match="RANK=2 is not below WORLD_SIZE=2"):
        sweep_share()


def test_names_expand_as_timm_lists_them():
    assert expand_models(["test_res*", "test_resnet", "test_vit"], pretrained=False) == ["test_resnet", "test_vit"]
    with pytest.raises(PPPAuditError, match="closest: test_resnet"):
        expand_models(["test_resnett"], pretrained=False)


def test_empty_expansion_is_refused_with_the_closest_names(tmp_path):
    line = fails(["sweep", "test_resnx*", "--no-pretrained", "--out", tmp_path], "no timm model matches 'test_resnx*'")
    assert "closest:" in line
    fails(["sweep", "--out", tmp_path], "no models to sweep")


def test_model_list_file(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text("# tiny ones\ntest_resnet\n\ntest_byob*  # a pattern\n")
    from ppp_audit.sweep import read_model_list

    assert read_model_list(listing) == ["test_resnet", "test_byob*"]
    fails(["sweep", "--model-list", tmp_path / "none.txt", "--out", tmp_path], "cannot read --model-list")


def test_records_are_json_with_the_settings(swept):
    out, _ = swept
    record = next(iter_records(out))
    data = json.loads((record.folder / "run.json").read_text())
    assert data["settings"]["paddings"] == ["reflect"] and data["status"] == DONE and "folder" not in data


def test_a_sweep_needs_its_folder():
    fails(["sweep", "test_resnet"], "a sweep needs --out DIR")


class NestedSweep(FakeRunner):
    """While auditing its first model, a second sweep starts on the same folder (as a second terminal would)."""

    def __init__(self, out: Path, settings: dict) -> None:
        super().__init__()
        self.out, self.settings, self.second = out, settings, None

    def __call__(self, config: AuditConfig, folder: Path, *, timeout_s: float, pages: bool):
        if self.second is None:
            self.second = FakeRunner()
            self.second_summary = run_sweep(MODELS, self.settings, self.out, audit_runner=self.second)
        return super().__call__(config, folder, timeout_s=timeout_s, pages=pages)


def test_two_sweeps_on_one_folder_split_the_models(tmp_path):
    settings = _settings()
    first = NestedSweep(tmp_path, settings)
    summary = run_sweep(MODELS, settings, tmp_path, audit_runner=first)
    assert first.second_summary.claimed == [MODELS[0]], "the second sweep audited a model the first one holds"
    assert sorted(model for model, _ in first.calls + first.second.calls) == sorted(MODELS)
    assert summary.done == [MODELS[0]] and summary.skipped == MODELS[1:]
    assert all(record.status == DONE for record in iter_records(tmp_path))
    assert not list(tmp_path.rglob(CLAIM)), "a claim outlived its audit"


def test_a_claim_left_by_a_dead_sweep_is_taken_over(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    settings = _settings()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    claims = {MODELS[0]: {"host": socket.gethostname(), "pid": gone.pid},  # this machine, process gone: stale
              MODELS[1]: {"host": "another-machine", "pid": 1},  # another machine, refreshed now: live
              MODELS[2]: {"host": "another-machine", "pid": 1}}  # another machine, not refreshed for long: stale
    for model, claim in claims.items():
        (folder := run_folder(tmp_path, model, settings)).mkdir(parents=True)
        (folder / CLAIM).write_text(json.dumps(claim))
    old = time.time() - 10_000
    os.utime(run_folder(tmp_path, MODELS[2], settings) / CLAIM, (old, old))
    summary = run_sweep(MODELS, settings, tmp_path, audit_runner=(fake := FakeRunner()), timeout_s=60)
    assert [model for model, _ in fake.calls] == [MODELS[0], MODELS[2]] and summary.claimed == [MODELS[1]]
    assert (run_folder(tmp_path, MODELS[1], settings) / CLAIM).is_file(), "another sweep's live claim was removed"


def test_an_audit_process_ends_with_its_killed_sweep(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    here = Path(__file__).parent
    parent = subprocess.Popen([sys.executable, str(here / "orphan_child.py"), str(pid_file)], cwd=here)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the audit process outlived its sweep killed with SIGKILL")


def test_shared_settings_are_checked_once_before_the_first_model(tmp_path, monkeypatch):
    spawned = []
    monkeypatch.setattr("ppp_audit.sweep.audit_in_process", lambda *a, **k: spawned.append(1))
    fails(["sweep", *MODELS, *SETTINGS, "--images", tmp_path / "no-such-folder", "--out", tmp_path / "s"],
          "image folder")
    fails(["sweep", *MODELS, *SETTINGS, "-p", "reflekt", "--out", tmp_path / "s"], "unknown padding scheme 'reflekt'")
    fails(["sweep", *MODELS, *SETTINGS, "--timeout", "inf", "--out", tmp_path / "s"], "--timeout must be a positive")
    assert not spawned and not (tmp_path / "s" / "runs").exists()
