"""A small Hub-compatible HTTP server for tests: the real ``huggingface_hub`` client talks to it over loopback.

It implements the endpoints ``huggingface_hub`` 2.4 uses to create a repo, read its info, upload files in a commit
(inline, or through Git LFS) and read them back, with the Hub's own response headers (``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``, ``X-Error-Code``):

* ``POST /api/repos/create``
* ``GET  /api/{models,datasets}/NS/NAME[/revision/REV]``
* ``POST /api/validate-yaml`` (parses the card's YAML; checks ``model-index`` has what the Hub requires)
* ``POST /api/{models,datasets}/NS/NAME/preupload/REV`` (``lfs`` or ``regular`` per file, by the Hub's rules)
* ``POST /[datasets/]NS/NAME.git/info/lfs/objects/batch`` (Git LFS batch API, ``basic`` and ``multipart`` transfers)
  and ``…/objects/verify``; ``POST /api/complete_multipart`` (signed URL)
* ``POST /api/{models,datasets}/NS/NAME/commit/REV[?create_pr=1]`` (NDJSON ``file``/``lfsFile``/``deletedFile``;
  honours ``parentCommit``)
* ``HEAD``/``GET /[datasets/]NS/NAME/resolve/REV/PATH`` (an LFS file redirects to the object store, like the Hub's CDN)

LFS objects live in an object store on a **second origin** (``storage_url``, another port), as S3 is for the Hub:
uploads (``PUT``) and downloads (``GET``) there are authorized by a signed URL, never by the token, and the client
must not send its token there. Git LFS objects are per repo, keyed by sha256; a ``PUT`` is checked against the
sha256 and size it was signed for.

The client uses the LFS batch API only when Xet is off (``HF_HUB_DISABLE_XET=1``): with ``hf_xet`` installed,
``huggingface_hub`` 2.4 uploads LFS files through Xet storage without asking the batch API, and this server has no
Xet (CAS) service (``/api/…/xet-write-token`` answers 501 saying so).

Repos live in memory as git-like commits (a full snapshot of files per commit). Tokens: a request must carry
``Authorization: Bearer T`` with ``T`` in ``tokens``, or it gets the Hub's 401. ``fail_next(kind, status)`` makes the
next request of one kind (``create``, ``info``, ``preupload``, ``commit``, ``resolve``, ``lfs-batch``, ``lfs-upload``,
``lfs-part``, ``lfs-complete``, ``lfs-verify``, ``lfs-download``) fail with that status; ``lfs-object`` makes the next
batch answer a per-object error (the LFS protocol's other way to refuse).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import posixpath
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

MAIN = "main"
_PREFIX = {"model": "", "dataset": "datasets/"}
LFS_JSON = "application/vnd.git-lfs+json"
REGULAR_MAX_SIZE = 10 * 2**20  # the Hub refuses larger files inline ("regular"): they go to LFS
BINARY_SNIFF = 8000  # git's own binary test looks for a NUL byte in the first 8000 bytes
# Authorized by their signed URL, not by the token (the client sends none: they stand for S3 / the Hub's CDN).
PRESIGNED_KINDS = frozenset({"lfs-upload", "lfs-part", "lfs-complete", "lfs-download"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def git_blob_oid(data: bytes) -> str:
    """What ``git hash-object`` prints for ``data``: the oid the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer file git stores in place of an LFS file's content."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def looks_binary(data: bytes) -> bool:
    """git's test for binary content (a NUL byte near the start): what makes the Hub store a file in LFS."""
    return b"\0" in data[:BINARY_SNIFF]


def lfs_patterns(gitattributes: bytes | None) -> list[str]:
    """The path patterns a ``.gitattributes`` puts in LFS (``PATTERN filter=lfs ...``)."""
    patterns = []
    for line in (gitattributes or b"").decode(errors="replace").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def matches_lfs_pattern(path: str, patterns: list[str]) -> bool:
    """gitattributes matching, simplified: a pattern without ``/`` matches the file name, else the whole path."""
    for pattern in patterns:
        target = path if "/" in pattern else posixpath.basename(path)
        if fnmatch.fnmatchcase(target, pattern.lstrip("/")):
            return True
    return False


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()  # paths stored as LFS pointers (their bytes are in ``files`` all the same)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    pull_requests: list[dict[str, Any]] = field(default_factory=list)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content: this repo's LFS store

    def files(self, revision: str = MAIN) -> dict[str, bytes]:
        """The files at a branch, ``refs/pr/N`` or commit oid."""
        return self.commits[self.resolve(revision)].files

    def lfs_files(self, revision: str = MAIN) -> frozenset[str]:
        """The paths stored in LFS at a revision."""
        return self.commits[self.resolve(revision)].lfs

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
    """The server and its state. Use as a context manager; ``url`` is the endpoint to give the client.

    Args:
        tokens: Accepted tokens.
        port: Port of the Hub origin (0: any free one).
        multipart_chunk_size: LFS objects larger than this are uploaded in parts of this size (``multipart``
            transfer, as the Hub asks for large files); smaller ones in one ``PUT`` (``basic``).
    """

    def __init__(self, tokens: set[str] | None = None, port: int = 0, multipart_chunk_size: int = 64 * 2**20) -> None:
        self.tokens = set(tokens or ())
        self.multipart_chunk_size = multipart_chunk_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict[str, Any]] = []
        self._failures: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._secret = secrets.token_bytes(16)  # signs the object-store URLs the batch API hands out
        self._parts: dict[tuple[str, str, str], dict[int, bytes]] = {}  # (repo type, id, oid) -> multipart parts
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._storage = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # another origin, as S3 is for the Hub
        self._threads = []
        for server in (self._server, self._storage):
            server.daemon_threads = True
            self._threads.append(threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                                  daemon=True))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def storage_url(self) -> str:
        """The LFS object store's origin (uploads and downloads of LFS content go there, never the token)."""
        host, port = self._storage.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server, thread in zip((self._server, self._storage), self._threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

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
        attributes = b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
        repo.commits[oid] = Commit(oid, None, "initial commit", "", {".gitattributes": attributes})
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
        lfs = set(repo.commits[base].lfs)
        for path in ops["delete"]:
            if files.pop(path, None) is None:
                raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            lfs.discard(path)
        files.update(ops["add"])
        lfs = (lfs - set(ops["add"])) | set(ops.get("lfs", ()))
        oid = self._new_oid(summary)
        repo.commits[oid] = Commit(oid, base, summary, description, files, frozenset(lfs))
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

    # ---- signed object-store URLs (the Hub hands out S3 presigned URLs) ---------------------------------------

    def _signature(self, action: str, repo: Repo, oid: str, size: int) -> str:
        message = f"{action}:{repo.repo_type}:{repo.repo_id}:{oid}:{size}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _signed_query(self, action: str, repo: Repo, oid: str, size: int) -> str:
        return urlencode({"size": size, "sig": self._signature(action, repo, oid, size)})

    def _object_url(self, action: str, repo: Repo, oid: str, size: int, suffix: str = "") -> str:
        path = f"{repo.repo_type}/{repo.repo_id}/{oid}{suffix}"
        return f"{self.storage_url}/{quote(path)}?{self._signed_query(action, repo, oid, size)}"

    def _check_signature(self, action: str, repo: Repo, oid: str, query: dict[str, list[str]]) -> int:
        """The size the URL was signed for; 403 (as S3 answers) when the signature does not match."""
        try:
            size = int(query["size"][0])
            given = query["sig"][0]
        except (KeyError, ValueError):
            raise HttpError(403, "Request is missing its signature") from None
        if not hmac.compare_digest(given, self._signature(action, repo, oid, size)):
            raise HttpError(403, "The request signature we calculated does not match the signature you provided")
        return size


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
            storage = self.server is hub._storage
            record = {"method": self.command, "path": unquote(split.path), "query": query,
                      "authorization": self.headers.get("Authorization"), "origin": "storage" if storage else "hub"}
            self._record = record  # endpoints add what they decided (LFS objects, commit operations)
            with hub._lock:
                hub.requests.append(record)
                try:
                    kind, handler = self._route_storage(raw_parts) if storage else self._route(raw_parts)
                    record["kind"] = kind
                    if kind in hub._failures:
                        status, message = hub._failures.pop(kind)
                        raise HttpError(status, message)
                    if kind not in PRESIGNED_KINDS:
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
                if parts[1:2] == ["complete_multipart"] and len(parts) == 6 and self.command == "POST":
                    return "lfs-complete", self._lfs_complete
                if len(parts) >= 4:
                    rest = parts[4:]
                    if rest[:1] in (["xet-write-token"], ["xet-read-token"]):
                        return "xet-token", self._no_xet
                    if self.command == "GET" and (not rest or rest[0] == "revision"):
                        return "info", self._info
                    if self.command == "POST" and rest[:1] == ["preupload"]:
                        return "preupload", self._preupload
                    if self.command == "POST" and rest[:1] == ["commit"]:
                        return "commit", self._commit
            elif self.command == "POST" and len(parts) >= 6 and parts[-4:-1] == ["info", "lfs", "objects"]:
                if parts[-1] == "batch":
                    return "lfs-batch", self._lfs_batch
                if parts[-1] == "verify":
                    return "lfs-verify", self._lfs_verify
            elif self.command in ("GET", "HEAD"):
                start = 1 if parts[:1] == ["datasets"] else 0
                if len(parts) >= start + 5 and parts[start + 2] == "resolve":
                    return "resolve", self._resolve
            raise HttpError(404, f"no fake endpoint for {self.command} {self.path}")

        def _route_storage(self, parts: list[str]):
            """The object store: ``TYPE/NS/NAME/OID`` (``PUT`` upload, ``GET`` download), ``…/OID/part/N``."""
            if self.command == "PUT" and len(parts) == 4:
                return "lfs-upload", self._lfs_upload
            if self.command == "PUT" and len(parts) == 6 and parts[4] == "part":
                return "lfs-part", self._lfs_part
            if self.command == "GET" and len(parts) == 4:
                return "lfs-download", self._lfs_download
            raise HttpError(404, f"no object-store endpoint for {self.command} {self.path}")

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
                commit = repo.commits[repo.resolve(revision)]
            except KeyError:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None
            patterns = lfs_patterns(commit.files.get(".gitattributes"))
            answer = []
            for item in json.loads(body)["files"]:
                path, existing = item["path"], commit.files.get(item["path"])
                # The Hub decides from the repo's .gitattributes, the size and the 512-byte sample the client sends
                # (of use only to sniff the content): it refuses binary content inline ("Your push was rejected
                # because it contains binary files"), so binary files (a NUL byte: git's own test) go to LFS, as do
                # tracked patterns and files over the inline limit. A suffix rule alone (*.png) would differ from the
                # Hub on a binary under another name, or on a repo whose .gitattributes does not list the suffix.
                sample = base64.b64decode(item.get("sample") or "")
                lfs = (matches_lfs_pattern(path, patterns) or item.get("size", 0) > REGULAR_MAX_SIZE
                       or looks_binary(sample))
                if existing is None:
                    oid = None
                else:  # the client compares it with its own: sha256 for an LFS file, the git blob id otherwise
                    oid = hashlib.sha256(existing).hexdigest() if path in commit.lfs else git_blob_oid(existing)
                answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                               "oid": oid})
            self._json(200, {"files": answer, "commitOid": commit.oid})

        def _commit(self, parts, query, body) -> None:
            repo_type, repo_id, rest = _parse_repo_path(parts[1:])
            repo = self._repo(repo_type, repo_id)
            revision = unquote(rest[1])
            if self.headers.get("Content-Type") != "application/x-ndjson":
                raise HttpError(400, "expected application/x-ndjson")
            header: dict[str, Any] = {}
            ops: dict[str, Any] = {"add": {}, "delete": [], "lfs": set()}
            logged: dict[str, list[str]] = {"file": [], "lfsFile": [], "deletedFile": []}
            missing = []
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                    continue
                if key not in logged:
                    raise HttpError(400, f"this fake Hub does not support '{key}' operations")
                logged[key].append(value["path"])
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HttpError(400, "file content must be base64")
                    data = base64.b64decode(value["content"])
                    if looks_binary(data):
                        raise HttpError(400, "Your push was rejected because it contains binary files. Please use "
                                             f"LFS to store binary files. Offending file: {value['path']}")
                    ops["add"][value["path"]] = data
                elif key == "lfsFile":
                    if value.get("algo") != "sha256":
                        raise HttpError(400, f"unsupported LFS hash algorithm {value.get('algo')!r}")
                    data = repo.lfs_objects.get(value["oid"])
                    if data is None or value.get("size", len(data)) != len(data):
                        missing.append(value["path"])
                        continue
                    ops["add"][value["path"]] = data
                    ops["lfs"].add(value["path"])
                else:
                    ops["delete"].append(value["path"])
            self._record["ops"] = logged
            if missing:  # the Hub's answer when the object was never uploaded (or not to this repo)
                raise HttpError(400, "Your push was rejected because an LFS pointer pointed to a file that does "
                                     f"not exist. Offending file: - {', '.join(missing)}")
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
            commit = repo.commits[oid]
            data = commit.files.get(path)
            if data is None:
                raise HttpError(404, "Entry not found", "EntryNotFound", commit=oid)
            if path in commit.lfs:
                # As the Hub does: a redirect to the object store (another origin: the client drops its token),
                # the file's sha256 and size on the redirect itself, the pointer's blob id as its ETag.
                sha = hashlib.sha256(data).hexdigest()
                self._send(302, b"", {"Location": hub._object_url("download", repo, sha, len(data)),
                                      "ETag": f'"{git_blob_oid(lfs_pointer(data))}"', "X-Linked-Etag": f'"{sha}"',
                                      "X-Linked-Size": str(len(data)), "X-Repo-Commit": oid})
                return
            self._send(200, data, {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": oid},
                       content_type="application/octet-stream")

        def _no_xet(self, parts, query, body) -> None:
            raise HttpError(501, "this fake Hub has no Xet storage: set HF_HUB_DISABLE_XET=1 so huggingface_hub "
                                 "uploads LFS files through the LFS batch API")

        # -- Git LFS (https://github.com/git-lfs/git-lfs/blob/main/docs/api/batch.md, Hub flavour) --
        def _lfs_repo(self, parts: list[str]) -> Repo:
            """``[datasets/]NS/NAME.git/info/lfs/objects/ACTION`` -> the repo."""
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            start = 1 if repo_type == "dataset" else 0
            if len(parts) != start + 6 or not parts[start + 1].endswith(".git"):
                raise HttpError(404, f"no fake endpoint for {self.command} {self.path}")
            return self._repo(repo_type, f"{parts[start]}/{parts[start + 1].removesuffix('.git')}")

        def _lfs_batch(self, parts, query, body) -> None:
            repo = self._lfs_repo(parts)
            request = json.loads(body)
            if request.get("operation") != "upload":
                raise HttpError(422, "this fake Hub serves LFS downloads through /resolve only")
            if request.get("hash_algo", "sha256") != "sha256":
                raise HttpError(422, f"unsupported hash algorithm {request.get('hash_algo')!r}")
            offered = request.get("transfers") or ["basic"]
            if "basic" not in offered:
                raise HttpError(422, f"no transfer adapter in common: the client offers {offered}; this fake Hub "
                                     "speaks basic and multipart (no Xet)")
            refusal = hub._failures.pop("lfs-object", None)
            verify = {"href": f"{hub.url}/{_PREFIX[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects/verify"}
            transfer, objects, decided = "basic", [], {}
            for obj in request.get("objects") or []:
                oid, size = obj.get("oid"), obj.get("size")
                if not (isinstance(oid, str) and _SHA256.match(oid) and isinstance(size, int) and size >= 0):
                    raise HttpError(422, f"invalid LFS object {obj!r}")
                stored = repo.lfs_objects.get(oid)
                if refusal is not None or (stored is not None and len(stored) != size):
                    code, message = refusal or (422, "object size does not match the stored object")
                    objects.append({"oid": oid, "size": size, "error": {"code": code, "message": message}})
                    decided[oid] = "error"
                elif stored is not None:  # already uploaded: no actions, so the client skips it
                    objects.append({"oid": oid, "size": size})
                    decided[oid] = "present"
                else:
                    objects.append({"oid": oid, "size": size, "authenticated": True,
                                    "actions": {"upload": self._upload_action(repo, oid, size, offered),
                                                "verify": verify}})
                    decided[oid] = "upload"
                    if "chunk_size" in objects[-1]["actions"]["upload"].get("header", {}):
                        transfer = "multipart"
            self._record.update(objects=decided, transfer=transfer)
            self._send(200, json.dumps({"transfer": transfer, "objects": objects, "hash_algo": "sha256"}).encode(),
                       content_type=LFS_JSON)

        def _upload_action(self, repo: Repo, oid: str, size: int, offered: list[str]) -> dict[str, Any]:
            chunk = hub.multipart_chunk_size
            if "multipart" not in offered or size <= chunk:
                return {"href": hub._object_url("upload", repo, oid, size)}  # basic: one PUT of the whole object
            # multipart (Hub flavour): a signed URL per part in the header, and the completion URL as href.
            header = {"chunk_size": str(chunk)}
            for number in range(1, -(-size // chunk) + 1):
                header[str(number)] = hub._object_url("upload", repo, oid, size, f"/part/{number}")
            complete = f"{hub.url}/api/complete_multipart/{repo.repo_type}/{repo.repo_id}/{oid}"
            return {"href": f"{complete}?{hub._signed_query('upload', repo, oid, size)}", "header": header}

        def _storage_object(self, parts: list[str], action: str, query) -> tuple[Repo, str, int]:
            repo = self._repo(parts[0], f"{parts[1]}/{parts[2]}")
            oid = parts[3]
            return repo, oid, hub._check_signature(action, repo, oid, query)

        def _store(self, repo: Repo, oid: str, size: int, data: bytes) -> None:
            if len(data) != size:
                raise HttpError(400, f"IncompleteBody: got {len(data)} bytes, the URL was signed for {size}")
            if hashlib.sha256(data).hexdigest() != oid:
                raise HttpError(400, "BadDigest: the content's sha256 does not match the object id")
            repo.lfs_objects[oid] = data

        def _lfs_upload(self, parts, query, body) -> None:
            repo, oid, size = self._storage_object(parts, "upload", query)
            self._store(repo, oid, size, body)
            self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, content_type="text/plain")

        def _lfs_part(self, parts, query, body) -> None:
            repo, oid, _ = self._storage_object(parts, "upload", query)  # the whole object is checked on completion
            hub._parts.setdefault((repo.repo_type, repo.repo_id, oid), {})[int(parts[5])] = body
            self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, content_type="text/plain")

        def _lfs_complete(self, parts, query, body) -> None:
            repo_type, repo_id, oid = parts[2], f"{parts[3]}/{parts[4]}", parts[5]
            repo, oid, size = self._storage_object([repo_type, *repo_id.split("/"), oid], "upload", query)
            payload = json.loads(body)
            uploaded = hub._parts.pop((repo_type, repo_id, oid), {})
            listed = [(part.get("partNumber"), part.get("etag")) for part in payload.get("parts") or []]
            expected = [(n, f'"{hashlib.md5(uploaded[n]).hexdigest()}"') for n in sorted(uploaded)]
            if payload.get("oid") != oid or listed != expected:
                raise HttpError(400, "InvalidPart: the parts listed are not the parts uploaded")
            self._store(repo, oid, size, b"".join(uploaded[n] for n, _ in listed))
            self._json(200, {"oid": oid, "size": size})

        def _lfs_verify(self, parts, query, body) -> None:
            repo = self._lfs_repo(parts)
            obj = json.loads(body)
            stored = repo.lfs_objects.get(obj.get("oid"))
            if stored is None or len(stored) != obj.get("size"):
                raise HttpError(404, f"LFS object {obj.get('oid')} was not uploaded")
            self._json(200, {"oid": obj["oid"], "size": len(stored)})

        def _lfs_download(self, parts, query, body) -> None:
            repo, oid, size = self._storage_object(parts, "download", query)
            data = repo.lfs_objects.get(oid)
            if data is None or len(data) != size:
                raise HttpError(404, "NoSuchKey")
            self._send(200, data, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'},
                       content_type="application/octet-stream")

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_HEAD(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

        def do_PUT(self) -> None:  # noqa: N802
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
        print(f"fake Hub at {hub.url} (LFS object store at {hub.storage_url}); set HF_HUB_DISABLE_XET=1 for LFS "
              "uploads; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
