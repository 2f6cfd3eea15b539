"""A loopback HTTP server that answers the Hugging Face Hub endpoints huggingface_hub calls to push and pull a model.

Push (``create_repo`` + ``create_branch`` + ``create_commit``):

* ``POST /api/validate-yaml`` (README metadata check), ``POST /api/repos/create``,
  ``POST /api/models/{repo}/branch/{branch}``;
* ``POST /api/models/{repo}/preupload/{rev}``: the server decides how each file travels. By default every file is
  ``regular`` (sent base64 inside the commit), so the client never needs Xet storage, which this server does not
  speak; with ``lfs_threshold`` set, files at least that large are ``lfs`` and, with ``HF_HUB_DISABLE_XET=1`` on
  the client, go through the LFS batch API (``POST /{repo}.git/info/lfs/objects/batch``, a basic-transfer ``PUT``
  to the href it returns, then ``verify``);
* ``POST /api/models/{repo}/commit/{rev}``: the ndjson commit (header, ``file`` with base64 content, ``lfsFile``
  pointing at an uploaded object).

Pull (``hf_hub_download`` / ``snapshot_download``, so ``vitprune.load("hf-hub:...")`` works against it):
``GET /api/models/{repo}/revision/{rev}``, ``GET /api/models/{repo}/tree/{rev}``,
``HEAD``/``GET /{repo}/resolve/{rev}/{path}``.

Write endpoints require ``Authorization: Bearer <token>`` with the server's token (401 otherwise). ``fail`` makes
an endpoint answer an error: ``hub.fail["commit"] = (500, "boom")``. Every request is recorded in ``requests``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    commits: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    kind: str
    authorized: bool


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, token: str, lfs_threshold: Optional[int] = None):
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.fail: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fakehub", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests look at --------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])

    def kinds(self) -> list[str]:
        return [r.kind for r in self.requests]


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, str, re.Pattern]] = [
    ("POST", "validate-yaml", re.compile(r"^/api/validate-yaml$")),
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "branch", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "commit", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$")),
    ("POST", "lfs-batch", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$")),
    ("PUT", "lfs-upload", re.compile(r"^/fake-lfs/(?P<oid>[0-9a-f]{64})$")),
    ("POST", "lfs-verify", re.compile(r"^/fake-lfs-verify/(?P<oid>[0-9a-f]{64})$")),
    ("GET", "info", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$")),
    ("GET", "tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?$")),
    ("GET", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
    ("HEAD", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]
_WRITE = {"create", "branch", "preupload", "commit", "lfs-batch"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload: Any = None, headers: Optional[dict[str, str]] = None,
              raw: Optional[bytes] = None, head: bool = False) -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: Optional[str] = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers, head=head)

    def _dispatch(self, method: str) -> None:
        parsed = urlparse(self.path)
        path = parsed.path
        body = self._body() if method in ("POST", "PUT") else b""
        for m, kind, rx in _ROUTES:
            match = rx.match(path)
            if m == method and match:
                break
        else:
            kind, match = "unknown", None
        hub = self.hub
        authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
        with hub.lock:
            hub.requests.append(Request(method, path, kind, authorized))
        head = method == "HEAD"
        if match is None:
            return self._error(404, f"no such endpoint {method} {path}", head=head)
        if kind in hub.fail:
            status, message = hub.fail[kind]
            return self._error(status, message, head=head)
        if kind in _WRITE and not authorized:
            return self._error(401, "Invalid credentials in Authorization header", head=head)
        groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        query = parse_qs(parsed.query)
        with hub.lock:
            getattr(self, "do_" + kind.replace("-", "_"))(groups, body, query, head)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    # -- endpoints -------------------------------------------------------------------------------
    def _repo(self, repo_id: str, head: bool = False) -> Optional[Repo]:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found", code="RepoNotFound", head=head)
        return repo

    def do_validate_yaml(self, g, body, q, head) -> None:
        json.loads(body)  # the client sends {"content": ..., "repoType": ...}
        self._send(200, {"errors": [], "warnings": []})

    def do_create(self, g, body, q, head) -> None:
        payload = json.loads(body)
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._error(409, "You already created this model repo", head=head)
        self.hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def do_branch(self, g, body, q, head) -> None:
        repo = self._repo(g["repo"])
        if repo is None:
            return
        if g["rev"] in repo.branches:
            return self._error(409, "Reference already exists")
        repo.branches[g["rev"]] = dict(repo.branches["main"])
        repo.heads[g["rev"]] = repo.heads["main"]
        self._send(200, {})

    def do_preupload(self, g, body, q, head) -> None:
        repo = self._repo(g["repo"])
        if repo is None:
            return
        if g["rev"] not in repo.branches:
            return self._error(404, "Revision not found", code="RevisionNotFound")
        files = json.loads(body)["files"]
        thr = self.hub.lfs_threshold
        out = [{"path": f["path"], "uploadMode": "lfs" if thr is not None and f["size"] >= thr else "regular",
                "shouldIgnore": False, "oid": None} for f in files]
        self._send(200, {"files": out, "commitOid": repo.heads[g["rev"]]})

    def do_lfs_batch(self, g, body, q, head) -> None:
        if self._repo(g["repo"]) is None:
            return
        req = json.loads(body)
        objects = []
        for o in req["objects"]:
            actions = None
            if o["oid"] not in self.hub.lfs:
                actions = {"upload": {"href": f"{self.hub.url}/fake-lfs/{o['oid']}", "header": {}},
                           "verify": {"href": f"{self.hub.url}/fake-lfs-verify/{o['oid']}", "header": {}}}
            objects.append({"oid": o["oid"], "size": o["size"], **({"actions": actions} if actions else {})})
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def do_lfs_upload(self, g, body, q, head) -> None:
        if hashlib.sha256(body).hexdigest() != g["oid"]:
            return self._error(400, "sha256 of the uploaded content does not match the oid")
        self.hub.lfs[g["oid"]] = body
        self._send(200, {})

    def do_lfs_verify(self, g, body, q, head) -> None:
        info = json.loads(body)
        ok = g["oid"] in self.hub.lfs and len(self.hub.lfs[g["oid"]]) == info["size"]
        return self._send(200, {}) if ok else self._error(404, "object not uploaded")

    def do_commit(self, g, body, q, head) -> None:
        repo = self._repo(g["repo"])
        if repo is None:
            return
        rev = g["rev"]
        if rev not in repo.branches:
            return self._error(404, "Revision not found", code="RevisionNotFound")
        files = dict(repo.branches[rev])
        summary = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                assert value.get("encoding") == "base64"
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.hub.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    return self._error(422, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = data
            elif key in ("deletedFile", "deletedFolder"):
                files = {p: d for p, d in files.items() if p != value["path"] and not p.startswith(value["path"] + "/")}
            else:
                return self._error(400, f"unknown commit operation {key}")
        digest = hashlib.sha1(repo.heads[rev].encode() + json.dumps(sorted(
            (p, _git_oid(d)) for p, d in files.items())).encode()).hexdigest()
        repo.branches[rev], repo.heads[rev] = files, digest
        repo.commits.append({"revision": rev, "summary": summary, "oid": digest})
        self._send(200, {"commitUrl": f"{self.hub.url}/{g['repo']}/commit/{digest}", "commitOid": digest,
                         "pullRequestUrl": None, "success": True})

    def _revision(self, repo: Repo, rev: str) -> Optional[str]:
        if rev in repo.branches:
            return rev
        return next((b for b, h in repo.heads.items() if h == rev), None)

    def _branch(self, g) -> tuple[Optional[Repo], Optional[str]]:
        """The repo and branch a request names, or (None, None) after answering 404 for either."""
        repo = self._repo(g["repo"])
        if repo is None:
            return None, None
        branch = self._revision(repo, g["rev"])
        if branch is None:
            self._error(404, "Revision not found", code="RevisionNotFound")
            return None, None
        return repo, branch

    def do_info(self, g, body, q, head) -> None:
        repo, branch = self._branch(g)
        if branch is None:
            return
        self._send(200, {"id": g["repo"], "modelId": g["repo"], "sha": repo.heads[branch], "private": repo.private,
                         "siblings": [{"rfilename": p} for p in sorted(repo.branches[branch])], "tags": []})

    def do_tree(self, g, body, q, head) -> None:
        repo, branch = self._branch(g)
        if branch is None:
            return
        entries = [{"type": "file", "path": p, "size": len(d), "oid": _git_oid(d)}
                   for p, d in sorted(repo.branches[branch].items())]
        self._send(200, entries)

    def do_resolve(self, g, body, q, head) -> None:
        repo = self._repo(g["repo"], head=head)
        if repo is None:
            return
        branch = self._revision(repo, g["rev"])
        if branch is None:
            return self._error(404, "Revision not found", code="RevisionNotFound", head=head)
        data = repo.branches[branch].get(g["path"])
        if data is None:
            return self._error(404, "Entry not found", code="EntryNotFound", head=head)
        self._send(200, raw=data, head=head, headers={
            "Content-Type": "application/octet-stream", "X-Repo-Commit": repo.heads[branch],
            "ETag": f'"{_git_oid(data)}"'})
