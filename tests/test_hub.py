"""Pushing reports to the Hub (docs/hub.md): the real huggingface_hub client, over HTTP, against tests/hubserver.py."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hubserver import PRESIGNED_KINDS, FakeHub
from typer.testing import CliRunner

from ppp_audit.files import WRITTEN_FILES
from ppp_audit.cli import app
from ppp_audit.hub import (
    CARD_FILE,
    INDEX_BEGIN,
    INDEX_FILE,
    eval_results,
    headline,
    index_entry,
    model_repo_for,
    push_report,
    report_subdir,
)

TOKEN = "hf_pppAuditFakeToken0123456789abcdef"  # a known fake: it must never show up in output or files
MODEL_REPO = "timm/resnet10t.c3_in1k"
MODEL_CARD = b"""---
license: apache-2.0
library_name: timm
tags:
- image-classification
model-index:
- name: resnet10t.c3_in1k
  results:
  - task:
      type: image-classification
    dataset:
      name: ImageNet-1k
      type: imagenet-1k
    metrics:
    - type: accuracy
      value: 68.3
---
# Model card for resnet10t.c3_in1k
"""


@pytest.fixture(scope="session")
def audited(tmp_path_factory):
    """One tiny real audit (random-init resnet10t, 4 dead-leaves windows at 64 px), saved with a real PNG figure."""
    import numpy as np
    from PIL import Image

    from ppp_audit.engine import AuditConfig, audit

    report = audit(AuditConfig(model="resnet10t", pretrained=False, paddings=["reflect"], num_images=4,
                               batch_size=4, input_size=64, device="cpu"))
    folder = tmp_path_factory.mktemp("report")
    report.save(folder / "report.json")
    pixels = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(folder / "ppp_native.png")
    return report, folder


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub on loopback; the client finds it through HF_ENDPOINT and the token through HF_TOKEN."""
    import huggingface_hub.constants

    # The suite's conftest sets HF_HUB_OFFLINE=1 so nothing reaches the real Hub; these tests talk to loopback only.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # With hf_xet installed, huggingface_hub 2.4 sends LFS files (our PNGs) to Xet storage, which the fake Hub does
    # not have; with Xet off it uses the Git LFS batch API, which it does. (Env too, for the subprocess test.)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    with FakeHub(tokens={TOKEN}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The files of a report folder a push sends: all but the hidden list of files ppp-audit wrote there."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != WRITTEN_FILES}


def _repo_requests(hub: FakeHub) -> list[dict]:
    """Requests to repo endpoints (huggingface_hub may also fetch a public agent registry, unauthenticated)."""
    return [r for r in hub.requests if "kind" in r]


def _tokens_sent(hub: FakeHub) -> set[str | None]:
    """Authorization sent to the Hub's API (the object store's signed URLs are checked by _storage_auth)."""
    return {r["authorization"] for r in _repo_requests(hub) if r["kind"] not in PRESIGNED_KINDS}


def _storage_auth(hub: FakeHub) -> set[str | None]:
    """Authorization sent with the signed object-store URLs: must be none (it would leak the token to S3/CDN)."""
    return {r["authorization"] for r in _repo_requests(hub) if r["kind"] in PRESIGNED_KINDS}


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, result.stdout + result.stderr


def _error_line(output: str) -> str:
    """The one error line (huggingface_hub's progress bars may share stderr, and end without a newline)."""
    (line,) = [line for line in output.splitlines() if "ppp-audit: error:" in line]
    return line[line.index("ppp-audit: error:"):]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _since(hub: FakeHub, mark: int) -> list[dict]:
    return [r for r in hub.requests[mark:] if "kind" in r]


def test_push_writes_report_figures_index_and_card(hub, audited):
    report, folder = audited
    result = push_report(folder, "me/ppp-audits", endpoint=hub.url)

    subdir = report_subdir(report)
    assert subdir == "resnet10t@random-init/native+reflect"
    files = hub.repo("me/ppp-audits").files()
    assert files[f"{subdir}/report.json"] == (folder / "report.json").read_bytes()
    assert files[f"{subdir}/ppp_native.png"] == (folder / "ppp_native.png").read_bytes()  # binary, byte for byte
    assert result.path_in_repo == subdir and result.url.endswith(f"/datasets/me/ppp-audits/tree/main/{subdir}")

    index = json.loads(files[INDEX_FILE])
    (entry,) = index["reports"]
    assert entry["path"] == subdir and entry["weights"] == "random-init"
    assert sorted(entry["files"]) == ["ppp_native.png", "report.json"]
    for row, scheme in zip(entry["headline"], report.results, strict=True):
        assert row["scheme"] == scheme.scheme
        assert row["last_strength"] == pytest.approx(scheme.last_strength)
        assert row["max_strength"] == pytest.approx(scheme.max_strength)

    from huggingface_hub import DatasetCard

    card = DatasetCard(files[CARD_FILE].decode())
    assert "ppp-audit" in card.data.get("tags") and card.data.get("viewer") is False
    assert f"| `resnet10t` | random-init | native (zeros) | {report.scheme('native').last_strength:.3g} |" in card.text
    assert f"| reflect | {report.scheme('reflect').last_strength:.3g} |" in card.text
    assert _tokens_sent(hub) == {f"Bearer {TOKEN}"}  # the usual token resolution (HF_TOKEN), on every repo request
    assert _storage_auth(hub) == {None}  # the PNG went to the object store, without the token


def test_second_push_updates_card_and_index(hub, audited, tmp_path):
    from huggingface_hub import DatasetCard, HfApi

    from ppp_audit.report import Report

    report, folder = audited
    api = HfApi(endpoint=hub.url)
    api.create_repo("me/ppp-audits", repo_type="dataset")
    from huggingface_hub import CommitOperationAdd

    user_card = "---\nlicense: mit\ntags:\n- mine\n---\n# My audits\n\nHand-written notes that must survive.\n"
    api.create_commit("me/ppp-audits", [CommitOperationAdd(CARD_FILE, user_card.encode())], commit_message="card",
                      repo_type="dataset")

    push_report(folder, "me/ppp-audits")
    native_only = Report.from_dict({**report.to_dict(), "results": [report.results[0].to_dict()]})
    second = push_report(native_only, "me/ppp-audits", local_dir=tmp_path / "native-only")
    assert (tmp_path / "native-only" / "report.json").is_file()  # written locally before the push
    again = push_report(folder, "me/ppp-audits")  # the same report again: its own entry, unchanged
    assert not again.changed

    files = hub.repo("me/ppp-audits").files()
    paths = [item["path"] for item in json.loads(files[INDEX_FILE])["reports"]]
    assert paths == ["resnet10t@random-init/native", "resnet10t@random-init/native+reflect"]
    assert second.path_in_repo in paths
    card = DatasetCard(files[CARD_FILE].decode())
    assert card.data.get("license") == "mit" and card.data.get("tags")[0] == "mine"
    assert "Hand-written notes that must survive." in card.text
    assert card.text.count(INDEX_BEGIN) == 1
    assert card.text.count("](resnet10t@random-init/native/report.json)") == 1
    assert card.text.count("](resnet10t@random-init/native+reflect/report.json)") == 2  # one row per scheme
    commits = hub.repo("me/ppp-audits").commits.values()
    assert sum("report" in commit.summary for commit in commits) == 2  # the identical third push was a no-op


def test_push_command_opens_dataset_pr(hub, audited):
    report, folder = audited
    result, output = _cli("push", str(folder), "me/ppp-audits", "--create-pr", "--private")
    assert result.exit_code == 0, output

    repo = hub.repo("me/ppp-audits")
    assert repo.private
    assert set(repo.files()) == {".gitattributes"}  # main untouched
    (pr,) = repo.pull_requests
    assert pr["url"] in output
    proposed = repo.files("refs/pr/1")
    assert proposed[f"{report_subdir(report)}/report.json"] == (folder / "report.json").read_bytes()
    assert json.loads(proposed[INDEX_FILE])["reports"][0]["path"] == report_subdir(report)


def test_revision_pushes_to_that_branch(hub, audited):
    from huggingface_hub import HfApi

    report, folder = audited
    HfApi(endpoint=hub.url).create_repo("me/ppp-audits", repo_type="dataset")
    repo = hub.repo("me/ppp-audits")
    repo.refs["dev"] = repo.refs["main"]  # a branch, as `HfApi.create_branch` would make it

    result, output = _cli("push", str(folder), "me/ppp-audits", "--revision", "dev")
    assert result.exit_code == 0, output
    assert f"{report_subdir(report)}/report.json" in repo.files("dev")
    assert set(repo.files("main")) == {".gitattributes"}

    result, output = _cli("push", str(folder), "me/ppp-audits", "--revision", "nope")
    assert result.exit_code == 1 and "--revision does not exist" in output


def test_model_pr_adds_eval_results(hub, audited):
    from huggingface_hub import ModelCard

    report, folder = audited
    hub.seed(MODEL_REPO, {CARD_FILE: MODEL_CARD})
    result, output = _cli("push", str(folder), "me/ppp-audits", "--model-pr", "--model-repo", MODEL_REPO)
    assert result.exit_code == 0, output

    repo = hub.repo(MODEL_REPO, "model")
    assert repo.files()[CARD_FILE] == MODEL_CARD  # a pull request, not a commit to main
    (pr,) = repo.pull_requests
    assert pr["url"] in output and "native (zeros): last" in pr["description"]
    card = ModelCard(repo.files("refs/pr/1")[CARD_FILE].decode())
    assert card.data.license == "apache-2.0"
    by_metric = {(r.metric_type, r.metric_config): r for r in card.data.eval_results}
    assert by_metric[("accuracy", None)].metric_value == 68.3  # the existing result is kept
    for row in headline(report):
        assert by_metric[("ppp_strength_last_stage", row["scheme"])].metric_value == round(row["last_strength"], 4)
        assert by_metric[("ppp_strength_max", row["scheme"])].metric_value == round(row["max_strength"], 4)
    ours = by_metric[("ppp_strength_max", "reflect")]
    assert ours.source_url.endswith("/datasets/me/ppp-audits/tree/main/resnet10t@random-init/native+reflect")
    # The fake Hub checked the model-index against the Hub's required fields before accepting the commit.
    assert any(r["kind"] == "validate-yaml" and "status" not in r for r in _repo_requests(hub))


def test_model_pr_replaces_an_earlier_score(hub, audited):
    from huggingface_hub import ModelCard

    report, folder = audited
    earlier = eval_results(report)[0]  # native, last stage
    earlier.metric_value = 9.99
    seeded = ModelCard(MODEL_CARD.decode())
    seeded.data.eval_results.append(earlier)
    hub.seed(MODEL_REPO, {CARD_FILE: str(seeded).encode()})

    result = push_report(folder, model_pr=True, model_repo=MODEL_REPO)  # the PR alone, no dataset repo
    assert result.repo_id is None and result.model_pr_url
    card = ModelCard(hub.repo(MODEL_REPO, "model").files("refs/pr/1")[CARD_FILE].decode())
    ppp = [r for r in card.data.eval_results if r.metric_type.startswith("ppp_")]
    assert len(ppp) == 4  # replaced, not appended
    (native_last,) = [r for r in ppp if (r.metric_type, r.metric_config) == ("ppp_strength_last_stage", "native")]
    assert native_last.metric_value == round(report.scheme("native").last_strength, 4)

    hub.repo(MODEL_REPO, "model").refs["main"] = hub.repo(MODEL_REPO, "model").refs["refs/pr/1"]  # PR merged
    again, output = _cli("push", str(folder), "--model-pr", "--model-repo", MODEL_REPO)
    assert again.exit_code == 0 and "already carries these scores" in output
    assert len(hub.repo(MODEL_REPO, "model").pull_requests) == 1


def test_model_pr_needs_a_repo_for_non_hub_weights(hub, audited):
    _, folder = audited
    result, output = _cli("push", str(folder), "--model-pr")
    assert result.exit_code == 2
    assert "--model-repo" in output and "random-init" in output
    assert _repo_requests(hub) == []


def test_model_repo_for_resolves_hub_weights():
    def report(name: str, weights: str) -> dict:
        return {"model": {"name": name, "weights": weights}}

    assert model_repo_for(report("resnet10t", "hub")) == MODEL_REPO
    assert model_repo_for(report("hf-hub:someone/my-cnn", "hub")) == "someone/my-cnn"
    assert model_repo_for(report("resnet10t", "random-init")) is None
    assert model_repo_for(report("resnet10t", "file:/w/x.safetensors")) is None


def test_auth_failure_keeps_report_and_hides_token(hub, audited, monkeypatch):
    _, folder = audited
    before = _snapshot(folder)
    wrong = "hf_wrongTokenForTheFakeHub987654321"
    monkeypatch.setenv("HF_TOKEN", wrong)
    result, output = _cli("push", str(folder), "me/ppp-audits")
    assert result.exit_code == 1
    assert "401" in output and "hf auth login" in output
    assert str(folder) in output and f"ppp-audit push {folder} me/ppp-audits" in output
    assert wrong not in output and TOKEN not in output
    assert _snapshot(folder) == before
    assert hub.repos == {}
    assert _tokens_sent(hub) == {f"Bearer {wrong}"}


def test_server_error_keeps_report(hub, audited):
    _, folder = audited
    before = _snapshot(folder)
    hub.fail_next("commit", 500, "storage backend down")
    result, output = _cli("push", str(folder), "me/ppp-audits")
    assert result.exit_code == 1
    assert "HTTP 500" in output and "storage backend down" in output and str(folder) in output
    assert _snapshot(folder) == before
    assert set(hub.repo("me/ppp-audits").files()) == {".gitattributes"}  # nothing half-pushed


def test_offline_says_where_the_report_is(hub, audited, monkeypatch):
    _, folder = audited
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result, output = _cli("push", str(folder), "me/ppp-audits")
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE" in output and str(folder) in output and "ppp-audit push" in output
    assert _repo_requests(hub) == []


def test_bad_repo_id_fails_before_the_audit(hub):
    result, output = _cli("resnet10t", "--no-pretrained", "--push-to-hub", "not a repo id")
    assert result.exit_code == 2 and "invalid repo id" in output
    assert "report saved" not in output and _repo_requests(hub) == []


def test_audit_push_to_hub_end_to_end(hub, tmp_path):
    """`ppp-audit MODEL --push-to-hub` in a fresh process: saved under ./ppp-audit-reports, pushed, token unseen."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "ppp_audit", "resnet10t", "--no-pretrained", "-p", "reflect", "-n", "4",
         "--input-size", "64", "--no-progress", "--json", "-", "--push-to-hub", "me/ppp-audits"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    local = tmp_path / "ppp-audit-reports" / "resnet10t@random-init" / "native+reflect" / "report.json"
    assert local.is_file()
    remote = hub.repo("me/ppp-audits").files()
    written = _snapshot(local.parent)  # report.json plus the figures and page the audit drew
    assert {"report.json", "report.html"} <= set(written) and any(name.endswith(".png") for name in written)
    for name, data in written.items():
        assert remote[f"resnet10t@random-init/native+reflect/{name}"] == data
    figures = {f"resnet10t@random-init/native+reflect/{name}" for name in written if name.endswith(".png")}
    assert hub.repo("me/ppp-audits").lfs_files() == figures  # every figure through LFS, report and page inline
    assert "([html](resnet10t@random-init/native+reflect/report.html))" in remote[CARD_FILE].decode()
    assert "pushed resnet10t@random-init/native+reflect" in proc.stderr
    assert json.loads(proc.stdout) == json.loads(local.read_text())  # stdout stays JSON only
    assert _tokens_sent(hub) == {f"Bearer {TOKEN}"} and _storage_auth(hub) == {None}
    assert TOKEN not in proc.stdout + proc.stderr
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file
    for data in remote.values():
        assert TOKEN.encode() not in data


@pytest.mark.parametrize("local, label, dataset_type", [
    (False, "owner/beans#full (validation)", "owner/beans"),
    (True, "dataset my_parquet#full (validation)", "hf-dataset"),
])
def test_hf_dataset_audits_name_their_dataset_on_the_hub(audited, local, label, dataset_type):
    report = audited[0].to_dict()
    name = "/home/me/data/my_parquet" if local else "owner/beans"
    report["data"] = {"kind": "hf-dataset", "name": name, "config": "full", "split": "validation", "column": "image",
                      "num_rows": 500, "local": local, "num_images": 4}
    assert index_entry(report, "x", [])["data"]["label"] == label
    results = eval_results(report)
    assert {(r.dataset_type, r.dataset_name) for r in results} == {(dataset_type, label)}
    assert "/home/me" not in json.dumps([r.__dict__ for r in results], default=str)


# ---- LFS: binary files (the figures) go through the Git LFS batch API, as on the Hub -------------------------------


def test_png_figures_go_through_lfs(hub, audited, tmp_path):
    """preupload says lfs for the PNG -> LFS batch -> PUT to the object store -> verify -> commit with lfsFile."""
    from huggingface_hub import HfApi

    report, folder = audited
    subdir = report_subdir(report)
    png = (folder / "ppp_native.png").read_bytes()
    push_report(folder, "me/ppp-audits")

    log = _repo_requests(hub)
    kinds = [r["kind"] for r in log]
    steps = [kinds.index(kind) for kind in ("preupload", "lfs-batch", "lfs-upload", "lfs-verify", "commit")]
    assert steps == sorted(steps)
    assert all("status" not in r for r in log if r["kind"] != "resolve")  # resolve: 404s for the absent index/card
    (batch,) = [r for r in log if r["kind"] == "lfs-batch"]
    assert batch["objects"] == {_sha256(png): "upload"} and batch["transfer"] == "basic"
    (put,) = [r for r in log if r["kind"] == "lfs-upload"]
    assert put["origin"] == "storage" and put["path"].endswith(_sha256(png))
    (commit,) = [r for r in log if r["kind"] == "commit"]
    assert commit["ops"]["lfsFile"] == [f"{subdir}/ppp_native.png"]
    assert set(commit["ops"]["file"]) == {f"{subdir}/report.json", INDEX_FILE, CARD_FILE}  # text stays regular
    repo = hub.repo("me/ppp-audits")
    assert repo.lfs_files() == {f"{subdir}/ppp_native.png"}
    assert repo.files()[f"{subdir}/ppp_native.png"] == png
    assert _tokens_sent(hub) == {f"Bearer {TOKEN}"} and _storage_auth(hub) == {None}

    # Back through the client's own download: /resolve redirects to the object store, which serves the bytes.
    path = HfApi(endpoint=hub.url).hf_hub_download("me/ppp-audits", f"{subdir}/ppp_native.png", repo_type="dataset",
                                                   cache_dir=tmp_path)
    assert Path(path).read_bytes() == png
    assert [r["kind"] for r in _repo_requests(hub)][-2:] == ["resolve", "lfs-download"]
    assert _storage_auth(hub) == {None}


def test_lfs_objects_are_uploaded_once(hub, audited, tmp_path):
    """The same report again, or another report with the same figure: the store has the object, nothing is PUT."""
    from ppp_audit.report import Report

    report, folder = audited
    png = (folder / "ppp_native.png").read_bytes()
    push_report(folder, "me/ppp-audits")

    mark = len(hub.requests)
    again = push_report(folder, "me/ppp-audits")
    requests = _since(hub, mark)
    assert not again.changed
    assert [r["objects"] for r in requests if r["kind"] == "lfs-batch"] == [{_sha256(png): "present"}]
    assert not [r for r in requests if r["kind"] in PRESIGNED_KINDS or r["kind"] == "commit"]

    other = tmp_path / "native-only"
    Report.from_dict({**report.to_dict(), "results": [report.results[0].to_dict()]}).save(other / "report.json")
    shutil.copy(folder / "ppp_native.png", other / "ppp_native.png")
    mark = len(hub.requests)
    result = push_report(other, "me/ppp-audits")
    requests = _since(hub, mark)
    assert [r["objects"] for r in requests if r["kind"] == "lfs-batch"] == [{_sha256(png): "present"}]
    assert not [r for r in requests if r["kind"] in PRESIGNED_KINDS]
    (commit,) = [r for r in requests if r["kind"] == "commit"]
    assert commit["ops"]["lfsFile"] == [f"{result.path_in_repo}/ppp_native.png"]  # committed by reference
    repo = hub.repo("me/ppp-audits")
    assert repo.files()[f"{result.path_in_repo}/ppp_native.png"] == png
    assert list(repo.lfs_objects) == [_sha256(png)]


def test_large_figure_goes_multipart(hub, audited):
    """When the Hub asks for a multipart upload (large files), parts are PUT and the upload completed."""
    report, folder = audited
    png = (folder / "ppp_native.png").read_bytes()
    hub.multipart_chunk_size = 100  # the Hub asks for parts above its own threshold; a tiny one makes our PNG large
    push_report(folder, "me/ppp-audits")

    log = _repo_requests(hub)
    assert [r["transfer"] for r in log if r["kind"] == "lfs-batch"] == ["multipart"]
    assert len([r for r in log if r["kind"] == "lfs-part"]) == math.ceil(len(png) / 100) >= 2
    assert [r["kind"] for r in log].count("lfs-complete") == 1
    assert all("status" not in r for r in log if r["kind"] != "resolve")
    assert hub.repo("me/ppp-audits").files()[f"{report_subdir(report)}/ppp_native.png"] == png
    assert _storage_auth(hub) == {None}


@pytest.mark.parametrize("kind, status, message, said", [
    ("lfs-batch", 403, "no write access", "permission denied (HTTP 403: no write access)"),
    ("lfs-upload", 403, "Request has expired",
     ("Error while uploading 'resnet10t@random-init/native+reflect/ppp_native.png' to the Hub: permission denied "
      "(HTTP 403: Request has expired)")),
    ("lfs-object", 422, "Object too large", "the Hub refused to store the files (Object too large)"),
])
def test_lfs_failure_keeps_report_and_hides_token(hub, audited, kind, status, message, said):
    _, folder = audited
    before = _snapshot(folder)
    hub.fail_next(kind, status, message)
    result, output = _cli("push", str(folder), "me/ppp-audits")
    assert result.exit_code == 1
    line = _error_line(output)
    assert line.startswith(f"ppp-audit: error: push to me/ppp-audits failed: {said} (report saved at {folder})")
    assert line.endswith(f"then run `ppp-audit push {folder} me/ppp-audits`")
    assert "report this" not in line  # a known failure, not a bug
    assert TOKEN not in output
    assert _snapshot(folder) == before
    assert set(hub.repo("me/ppp-audits").files()) == {".gitattributes"}
    assert "commit" not in [r["kind"] for r in _repo_requests(hub)]


def test_xet_failure_is_reported_too(hub, audited, monkeypatch):
    """With Xet on (huggingface_hub's default when hf_xet is installed) LFS files skip the batch API for Xet storage,
    which the fake Hub lacks: that failure too is one line, exit 1, token unseen."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    _, folder = audited
    result, output = _cli("push", str(folder), "me/ppp-audits")
    assert result.exit_code == 1
    line = _error_line(output)
    assert "501 Not Implemented" in line and f"then run `ppp-audit push {folder} me/ppp-audits`" in line
    assert TOKEN not in output
    kinds = [r["kind"] for r in _repo_requests(hub)]
    assert kinds[-1] == "xet-token" and "lfs-batch" not in kinds


def test_fake_hub_lfs_protocol_checks(hub):
    """The fake Hub refuses what the Hub refuses: bad signatures, content that does not match its oid, LFS pointers
    to objects never uploaded, binary content sent inline."""
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url).create_repo("me/x", repo_type="dataset")
    data = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"

    def call(method: str, url: str, body: bytes, content_type: str, auth: bool = True) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {TOKEN}"} if auth else {})
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method)) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def commit(line: dict) -> tuple[int, bytes]:
        body = "\n".join(json.dumps(item) for item in [{"key": "header", "value": {"summary": "s"}}, line])
        return call("POST", f"{hub.url}/api/datasets/me/x/commit/main", body.encode(), "application/x-ndjson")

    pointer = {"key": "lfsFile", "value": {"path": "a.png", "algo": "sha256", "oid": _sha256(data), "size": len(data)}}
    status, body = commit(pointer)
    assert status == 400 and b"LFS pointer pointed to a file that does not exist" in body
    status, body = commit({"key": "file", "value": {"path": "a.png", "encoding": "base64",
                                                    "content": __import__("base64").b64encode(data).decode()}})
    assert status == 400 and b"binary files" in body

    batch = {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
             "objects": [{"oid": _sha256(data), "size": len(data)}]}
    status, body = call("POST", f"{hub.url}/datasets/me/x.git/info/lfs/objects/batch", json.dumps(batch).encode(),
                        "application/vnd.git-lfs+json")
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub.storage_url)
    assert call("PUT", href.replace("sig=", "sig=0"), data, "application/octet-stream", auth=False)[0] == 403
    assert call("PUT", href, data[::-1], "application/octet-stream", auth=False)[0] == 400  # sha256 mismatch
    assert call("PUT", href, data, "application/octet-stream", auth=False)[0] == 200
    assert commit(pointer)[0] == 200
    assert hub.repo("me/x").files()["a.png"] == data


def test_a_partial_report_is_not_pushed(hub, audited, tmp_path):
    report, _ = audited
    data = report.to_dict()
    data["interrupted"] = "stopped by Ctrl-C after 2 of 4 images; the statistics cover those"
    (tmp_path / "report.json").write_text(json.dumps(data))
    result, output = _cli("push", str(tmp_path), "me/ppp-audits", "--model-pr", "--model-repo", MODEL_REPO)
    assert result.exit_code == 2
    assert "is partial (stopped by Ctrl-C after 2 of 4 images" in " ".join(_error_line(output).split())
    assert _repo_requests(hub) == []  # refused before any request
