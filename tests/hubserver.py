"""A small Hub-compatible HTTP server for tests: the real ``huggingface_hub`` client talks to it over loopback.

It implements the endpoints ``huggingface_hub`` 2.4 uses to create a repo, read its info, upload files in a commit
and read them back, with the Hub's own response headers (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``):

* ``POST /api/repos/create``
* ``GET  /api/{models,datasets}/NS/NAME[/revision/REV]``
* ``POST /api/validate-yaml`` (parses the card's YAML; checks ``model-index`` has what the Hub requires)
* ``POST /api/{models,datasets}/NS/NAME/preupload/REV`` (every file is answered ``regular``: no LFS/Xet uploads)
* ``POST /api/{models,datasets}/NS/NAME/commit/REV[?create_pr=1]`` (NDJSON; honours ``parentCommit``)
* ``HEAD``/``GET /[datasets/]NS/NAME/resolve/REV/PATH``

Repos live in memory as git-like commits (a full snapshot of files per commit). Tokens: a request must carry
``Authorization: Bearer T`` with ``T`` in ``tokens``, or it gets the Hub's 401. ``fail_next(kind, status)`` makes the
next request of one kind (``create``, ``info``, ``preupload``, ``commit``, ``resolve``) fail with that status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAIN = "main"
_PREFIX = {"model": "", "dataset": "datasets/"}


def git_blob_oid(data: bytes) -> str:
    """What ``git hash-object`` prints for ``data``: the oid the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    pull_requests: list[dict[str, Any]] = field(default_factory=list)

    def files(self, revision: str = MAIN) -> dict[str, bytes]:
        """The files at a branch, ``refs/pr/N`` or commit oid."""
        return self.commits[self.resolve(revision)].files

    def resolve(self, revision: str) -> str:
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        raise KeyError(revision)


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.extra = extra or {}


class FakeHub:
    """The server and its state. Use as a context manager; ``url`` is the endpoint to give the client."""

    def __init__(self, tokens: set[str] | None = None, port: int = 0) -> None:
        self.tokens = set(tokens or ())
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict[str, Any]] = []
        self._failures: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- test helpers -------------------------------------------------------------------------------------------

    def fail_next(self, kind: str, status: int, message: str = "Internal Error") -> None:
        self._failures[kind] = (status, message)

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def seed(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> Repo:
        """Create a repo that already holds ``files`` on main (e.g. a model repo with its card)."""
        repo = self._create(repo_id, repo_type, private=False)
        self._commit(repo, MAIN, "Seed", "", {"add": files, "delete": []}, parent=None, create_pr=False)
        return repo

    # ---- state changes -----------------------------------------------------------------------------------------

    def _new_oid(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{self._counter}:{seed}".encode()).hexdigest()

    def _create(self, repo_id: str, repo_type: str, private: bool) -> Repo:
        repo = Repo(repo_id, repo_type, private)
        oid = self._new_oid(repo_id)
        repo.commits[oid] = Commit(oid, None, "initial commit", "", {".gitattributes": b"*.bin filter=lfs\n"})
        repo.refs[MAIN] = oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _commit(self, repo: Repo, revision: str, summary: str, description: str, ops: dict[str, Any],
                parent: str | None, create_pr: bool) -> tuple[str, str | None]:
        try:
            head = repo.resolve(revision)
        except KeyError:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None
        if parent is not None and not create_pr and parent != head:
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        base = parent if (create_pr and parent is not None) else head
        files = dict(repo.commits[base].files)
        for path in ops["delete"]:
            if files.pop(path, None) is None:
                raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        files.update(ops["add"])
        oid = self._new_oid(summary)
        repo.commits[oid] = Commit(oid, base, summary, description, files)
        pr_url = None
        if create_pr:
            number = len(repo.pull_requests) + 1
            repo.refs[f"refs/pr/{number}"] = oid
            pr_url = f"{self.url}/{_PREFIX[repo.repo_type]}{repo.repo_id}/discussions/{number}"
            repo.pull_requests.append({"num": number, "title": summary, "description": description, "base": base,
                                       "head": oid, "url": pr_url})
        else:
            repo.refs[revision] = oid
        return oid, pr_url


def _parse_repo_path(parts: list[str]) -> tuple[str, str, list[str]]:
    """``['datasets', 'ns', 'name', *rest]`` -> (``dataset``, ``ns/name``, rest)."""
    kind, rest = parts[0], parts[1:]
    repo_type = {"models": "model", "datasets": "dataset"}.get(kind)
    if repo_type is None or len(rest) < 2:
        raise HttpError(404, "Not Found")
    return repo_type, f"{rest[0]}/{rest[1]}", rest[2:]


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
            pass

        # -- plumbing --
        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def _error(self, err: HttpError) -> None:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._json(err.status, {"error": err.message, **err.extra}, headers)

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            raw_parts = [p for p in split.path.split("/") if p]
            query = parse_qs(split.query)
            body = self._body()
            record = {"method": self.command, "path": unquote(split.path), "query": query,
                      "authorization": self.headers.get("Authorization")}
            with hub._lock:
                hub.requests.append(record)
                try:
                    kind, handler = self._route(raw_parts)
                    record["kind"] = kind
                    if kind in hub._failures:
                        status, message = hub._failures.pop(kind)
                        raise HttpError(status, message)
                    self._check_auth()
                    handler(raw_parts, query, body)
                except HttpError as err:
                    record["status"] = err.status
                    self._error(err)

        def _check_auth(self) -> None:
            auth = self.headers.get("Authorization") or ""
            token = auth.removeprefix("Bearer ").strip()
            if token not in hub.tokens:
                raise HttpError(401, "Invalid credentials in Authorization header")

        def _route(self, parts: list[str]):
            if parts[:1] == ["api"]:
                if parts[1:3] == ["repos", "create"] and self.command == "POST":
                    return "create", self._create_repo
                if parts[1:2] == ["validate-yaml"] and self.command == "POST":
                    return "validate-yaml", self._validate_yaml
                if len(parts) >= 4:
                    rest = parts[4:]
                    if self.command == "GET" and (not rest or rest[0] == "revision"):
                        return "info", self._info
                    if self.command == "POST" and rest[:1] == ["preupload"]:
                        return "preupload", self._preupload
                    if self.command == "POST" and rest[:1] == ["commit"]:
                        return "commit", self._commit
            elif self.command in ("GET", "HEAD"):
                start = 1 if parts[:1] == ["datasets"] else 0
                if len(parts) >= start + 5 and parts[start + 2] == "resolve":
                    return "resolve", self._resolve
            raise HttpError(404, f"no fake endpoint for {self.command} {self.path}")

        def _repo(self, repo_type: str, repo_id: str) -> Repo:
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                raise HttpError(404, "Repository not found", "RepoNotFound")
            return repo

        # -- endpoints --
        def _create_repo(self, parts, query, body) -> None:
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            url = f"{hub.url}/{_PREFIX[repo_type]}{repo_id}"
            if (repo_type, repo_id) in hub.repos:
                raise HttpError(409, "You already created this repo", extra={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            hub._create(repo_id, repo_type, private=private)
            self._json(200, {"url": url, "name": repo_id})

        def _info(self, parts, query, body) -> None:
            repo_type, repo_id, rest = _parse_repo_path(parts[1:])
            repo = self._repo(repo_type, repo_id)
            revision = unquote(rest[1]) if len(rest) >= 2 else MAIN
            try:
                oid = repo.resolve(revision)
            except KeyError:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None
            files = repo.commits[oid].files
            self._json(200, {"id": repo_id, "sha": oid, "private": repo.private,
                             "siblings": [{"rfilename": path} for path in sorted(files)]})

        def _validate_yaml(self, parts, query, body) -> None:
            content = json.loads(body)["content"]
            errors = []
            try:
                block = content.split("---", 2)[1] if content.startswith("---") else ""
                metadata = yaml.safe_load(block) or {}
                if not isinstance(metadata, dict):
                    errors.append("metadata must be a mapping")
                else:
                    errors += _model_index_errors(metadata.get("model-index"))
            except yaml.YAMLError as exc:
                errors.append(f"invalid YAML: {exc}")
            self._json(400 if errors else 200, {"errors": [{"message": m} for m in errors], "warnings": []})

        def _preupload(self, parts, query, body) -> None:
            repo_type, repo_id, rest = _parse_repo_path(parts[1:])
            repo = self._repo(repo_type, repo_id)
            revision = unquote(rest[1])
            try:
                files = repo.files(revision)
            except KeyError:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None
            answer = []
            for item in json.loads(body)["files"]:
                existing = files.get(item["path"])
                answer.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                               "oid": git_blob_oid(existing) if existing is not None else None})
            self._json(200, {"files": answer, "commitOid": repo.resolve(revision)})

        def _commit(self, parts, query, body) -> None:
            repo_type, repo_id, rest = _parse_repo_path(parts[1:])
            repo = self._repo(repo_type, repo_id)
            revision = unquote(rest[1])
            if self.headers.get("Content-Type") != "application/x-ndjson":
                raise HttpError(400, "expected application/x-ndjson")
            header: dict[str, Any] = {}
            ops: dict[str, Any] = {"add": {}, "delete": []}
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise HttpError(400, "file content must be base64")
                    ops["add"][value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    ops["delete"].append(value["path"])
                else:
                    raise HttpError(400, f"this fake Hub does not support '{key}' operations")
            if not header.get("summary"):
                raise HttpError(400, "commit summary is required")
            create_pr = query.get("create_pr") == ["1"]
            oid, pr_url = hub._commit(repo, revision, header["summary"], header.get("description", ""), ops,
                                      parent=header.get("parentCommit"), create_pr=create_pr)
            url = f"{hub.url}/{_PREFIX[repo_type]}{repo_id}/commit/{oid}"
            self._json(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": pr_url, "success": True})

        def _resolve(self, parts, query, body) -> None:
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            start = 1 if repo_type == "dataset" else 0
            repo_id = f"{parts[start]}/{parts[start + 1]}"
            revision = unquote(parts[start + 3])
            path = "/".join(unquote(p) for p in parts[start + 4:])
            repo = self._repo(repo_type, repo_id)
            try:
                oid = repo.resolve(revision)
            except KeyError:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None
            data = repo.commits[oid].files.get(path)
            if data is None:
                raise HttpError(404, "Entry not found", "EntryNotFound", commit=oid)
            self._send(200, data, {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": oid},
                       content_type="application/octet-stream")

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_HEAD(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

    return Handler


def _model_index_errors(model_index: Any) -> list[str]:
    """What the Hub's model-index spec requires (hub-docs modelcard.md): name, and per result task.type,
    dataset.type/name and metrics with type and value."""
    if model_index is None:
        return []
    errors = []
    if not isinstance(model_index, list) or not model_index:
        return ["model-index must be a non-empty list"]
    for model in model_index:
        if not isinstance(model, dict) or not model.get("name"):
            errors.append("model-index entries need a name")
            continue
        for result in model.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append("model-index result needs task.type")
            dataset = result.get("dataset") or {}
            if not dataset.get("type") or not dataset.get("name"):
                errors.append("model-index result needs dataset.type and dataset.name")
            metrics = result.get("metrics") or []
            if not metrics:
                errors.append("model-index result needs metrics")
            for metric in metrics:
                if not metric.get("type") or "value" not in metric:
                    errors.append("model-index metric needs type and value")
    return errors


if __name__ == "__main__":  # serve for a manual try: python tests/hubserver.py --port 8765 --token hf_local
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", action="append", default=[], help="an accepted token (repeatable)")
    parser.add_argument("--seed-model", action="append", default=[], help="create an empty model repo OWNER/NAME")
    args = parser.parse_args()
    hub = FakeHub(tokens=set(args.token), port=args.port)
    for model in args.seed_model:
        hub.seed(model, {"README.md": f"---\nlibrary_name: timm\n---\n# {model}\n".encode()})
    with hub:
        print(f"fake Hub at {hub.url}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
