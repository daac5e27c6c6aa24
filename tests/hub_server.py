"""An in-memory, Hub-compatible HTTP server for tests (standard library only).

No machine running the test suite reaches the Hugging Face Hub, so the Hub tests point the real clients
(`huggingface_hub`, `datasets`, `transformers`, `peft`) at this server through `HF_ENDPOINT`. It implements the
subset of the Hub API those clients use to create repos, upload files (regular and LFS, with Xet disabled),
commit, list trees and download files:

| method      | path                                                         | used by                              |
|-------------|--------------------------------------------------------------|--------------------------------------|
| POST        | /api/repos/create, /api/repos/delete                         | `create_repo`, `delete_repo`         |
| GET         | /api/whoami-v2                                               | `whoami`                             |
| POST        | /api/validate-yaml                                           | commits that touch README.md         |
| GET         | /api/{type}s/{id}[/revision/{rev}]                           | `repo_info` (`id`, `sha`, `siblings`)|
| GET         | /api/{type}s/{id}/tree/{rev}[/{path}]                        | `list_repo_tree`, `HfFileSystem`     |
| POST        | /api/{type}s/{id}/paths-info/{rev}                           | `get_paths_info`, `HfFileSystem`     |
| GET         | /api/{type}s/{id}/refs, /api/{type}s/{id}/commits/{rev}      | `list_repo_refs`, `list_repo_commits`|
| POST        | /api/{type}s/{id}/preupload/{rev}                            | upload mode (regular or LFS)         |
| POST        | /{datasets/}{id}.git/info/lfs/objects/batch                  | LFS batch API                        |
| PUT         | /lfs-objects/{type}/{id}/{sha256}                            | LFS upload (basic transfer)          |
| POST        | /api/{type}s/{id}/commit/{rev}                               | NDJSON commits (412 on stale parent) |
| HEAD / GET  | /{datasets/}{id}/resolve/{rev}/{path}                        | `hf_hub_download` (Range supported)  |

Errors carry the `X-Error-Code` header the clients map to exceptions (`RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`). Faults (HTTP errors, dropped connections) can be injected per method/path with
`HubServer.inject_fault`, every request is recorded in `HubServer.requests`, and `HubServer.reset` forgets all repos.

Example:

```python
server = HubServer().start()  # port 0: the OS picks a free port
os.environ["HF_ENDPOINT"] = server.url  # before importing huggingface_hub
...
server.stop()
```
"""

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit


# Files the Hub stores with LFS whatever their content (a subset of the Hub's default .gitattributes).
LFS_SUFFIXES = (".parquet", ".arrow", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".npy", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(content: bytes) -> str:
    """Git's object id of a blob, which the Hub reports as `oid` of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit. LFS files keep their content in the LFS store, addressed by sha256."""

    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()

    @property
    def oid(self) -> str:
        # Like the Hub: the git oid of what git stores, i.e. the pointer file for LFS files.
        return git_blob_oid(self.pointer if self.lfs else self.content)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.oid, "size": len(self.content), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # per repo, like the Hub: uploads are not shared

    def resolve(self, revision: str) -> Commit | None:
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


@dataclass
class Fault:
    """An injected failure: the next `times` requests matching `method` and the `path` regex fail."""

    method: str
    path: str
    kind: str  # "status" (answer `status`) or "drop" (close the connection without answering)
    status: int
    times: int | None  # None: forever
    skip: int  # let this many matching requests through first
    hits: int = 0


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code, self.commit = status, message, error_code, commit


class DropConnection(Exception):
    pass


class HubServer:
    """In-memory Hub. Thread-safe; every request takes the state lock, which keeps commits atomic."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: list[Fault] = []
        self.offline = False
        self.requests: list[dict] = []
        self._clock = itertools.count()
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- test helpers -------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every repo (with its LFS objects), fault and recorded request."""
        with self.lock:
            self.repos.clear()
            self.faults.clear()
            self.requests.clear()
            self.offline = False

    def inject_fault(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        drop: bool = False,
        times: int | None = 1,
        skip: int = 0,
    ) -> Fault:
        """Make matching requests fail: answer `status`, or drop the connection without answering if `drop`.

        `path` is a regex searched in the URL path (e.g. `r"/commit/"`), `method` an HTTP method or `"*"`.
        """
        fault = Fault(method.upper(), path, "drop" if drop else "status", status, times, skip)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def set_offline(self, offline: bool = True) -> None:
        """Drop every connection while offline, to prove that a code path does not touch the network."""
        with self.lock:
            self.offline = offline

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Contents of every file of a repo at a revision (for assertions)."""
        with self.lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            return {path: stored.content for path, stored in commit.files.items()}

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        with self.lock:
            return len(self.repos[(repo_type, repo_id)].commits)

    # ---- state changes (called with the lock held) --------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        if self.offline:
            return Fault("*", "", "drop", 0, None, 0)
        for fault in self.faults:
            if fault.method not in ("*", method) or not re.search(fault.path, path):
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            if fault.times is not None and fault.hits >= fault.times:
                continue
            fault.hits += 1
            return fault
        return None

    def _new_commit(self, repo: Repo, title: str, files: dict[str, StoredFile], branch: str = "main") -> Commit:
        parent = repo.branches.get(branch)
        tick = next(self._clock)
        digest = hashlib.sha1(json.dumps([repo.repo_id, parent, title, tick, sorted(files)]).encode()).hexdigest()
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(oid=digest, parent=parent, title=title, date=date, files=files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"


def _directories(files: dict[str, StoredFile]) -> set[str]:
    return {"/".join(path.split("/")[:i]) for path in files for i in range(1, path.count("/") + 1)}


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients pool connections
    # Headers and body go out in two writes; with Nagle's algorithm the body waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server_version = "LoopbackHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format, *args):  # silence the default stderr access log
        pass

    # ---- plumbing -----------------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "") -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        if content_type:
            headers["Content-Type"] = content_type
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers, "application/json")

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        raw_path, query = parts.path, parse_qs(parts.query)
        body = self._read_body()
        with self.hub.lock:
            self.hub.requests.append(
                {
                    "method": self.command,
                    "path": raw_path,
                    "authorization": self.headers.get("Authorization"),
                    "time": time.monotonic(),
                }
            )
            fault = self.hub._take_fault(self.command, raw_path)
        try:
            if fault is not None and fault.kind == "drop":
                raise DropConnection
            if fault is not None:
                raise HubError(fault.status, "Injected failure")
            self._route(raw_path, query, body)
        except DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._json({"error": err.message}, err.status, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _require_auth(self) -> None:
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")

    # ---- routing ------------------------------------------------------------------------------------------------
    def _route(self, raw_path: str, query: dict, body: bytes) -> None:
        segments = [unquote(s) for s in raw_path.strip("/").split("/")]
        method = self.command
        if raw_path == "/api/whoami-v2":
            self._require_auth()
            return self._json({"type": "user", "name": "tester", "orgs": [], "auth": {"type": "access_token"}})
        if raw_path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body))
        if raw_path == "/api/repos/delete" and method in ("DELETE", "POST"):
            return self._delete_repo(json.loads(body))
        if raw_path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body))
        if segments[0] == "lfs-objects" and method == "PUT" and len(segments) == 5:
            return self._lfs_put(segments[1], f"{segments[2]}/{segments[3]}", segments[4], body)
        if segments[0] == "api" and len(segments) >= 4 and segments[1] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[segments[1]], f"{segments[2]}/{segments[3]}", segments[4:]
            return self._api_repo(method, repo_type, repo_id, rest, raw_path, query, body)
        # Git/LFS and file routes: /{datasets/}{namespace}/{name}(.git/info/lfs/objects/batch|/resolve/...)
        repo_type = "model"
        if segments[0] in REPO_TYPES and segments[0] != "models":
            repo_type, segments = REPO_TYPES[segments[0]], segments[1:]
        if len(segments) >= 2 and segments[1].endswith(".git") and segments[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{segments[0]}/{segments[1].removesuffix('.git')}", json.loads(body))
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:]))
        raise HubError(404, f"No route for {method} {raw_path}")

    def _api_repo(self, method, repo_type, repo_id, rest, raw_path, query, body) -> None:
        hub = self.hub
        if method == "GET" and (not rest or rest[0] == "revision"):
            return self._repo_info(repo_type, repo_id, rest[1] if rest else "main")
        if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
            return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]).strip("/"), query)
        if method == "POST" and rest[0] == "paths-info" and len(rest) == 2:
            form = parse_qs(body.decode())
            return self._paths_info(repo_type, repo_id, rest[1], form.get("paths", []))
        if method == "GET" and rest == ["refs"]:
            with hub.lock:
                repo = hub._repo(repo_type, repo_id)
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()]
            return self._json({"branches": branches, "converts": [], "tags": []})
        if method == "GET" and rest[0] == "commits" and len(rest) == 2:
            return self._list_commits(repo_type, repo_id, rest[1])
        if method == "POST" and rest[0] == "preupload" and len(rest) == 2:
            self._require_auth()
            return self._preupload(repo_type, repo_id, rest[1], json.loads(body))
        if method == "POST" and rest[0] == "commit" and len(rest) == 2:
            self._require_auth()
            return self._commit(repo_type, repo_id, rest[1], body)
        raise HubError(404, f"No route for {method} {raw_path}")

    # ---- endpoints ----------------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict) -> None:
        self._require_auth()
        hub = self.hub
        name, organization = payload["name"], payload.get("organization") or "tester"
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        with hub.lock:
            if (repo_type, repo_id) in hub.repos:
                url = hub._repo_url(hub.repos[(repo_type, repo_id)])
                return self._json({"error": "You already created this repo", "url": url}, 409)
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
            # Like the Hub: every new repo starts with a commit holding .gitattributes, so `repo_info().sha` exists.
            hub._new_commit(repo, "initial commit", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)})
            hub.repos[(repo_type, repo_id)] = repo
            url = hub._repo_url(repo)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict) -> None:
        self._require_auth()
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        with self.hub.lock:
            self.hub._repo(payload.get("type") or "model", repo_id)
            del self.hub.repos[(payload.get("type") or "model", repo_id)]
        self._json({})

    def _validate_yaml(self, payload: dict) -> None:
        # Only the front-matter delimiters are checked: a YAML parser is not in the standard library.
        content = payload.get("content", "")
        if content.startswith("---") and content.count("\n---") < 1:
            return self._json({"errors": [{"message": "Unterminated YAML front matter"}]}, 400)
        self._json({"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.hub
        with hub.lock:
            repo = hub._repo(repo_type, repo_id)
            commit = hub._commit(repo, revision)
            siblings = [
                {"rfilename": path, "size": len(stored.content), "blobId": stored.oid}
                for path, stored in commit.files.items()
            ]
            info = {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            }
            if repo_type == "model":
                info["modelId"] = repo_id
        self._json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict) -> None:
        hub = self.hub
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with hub.lock:
            commit = hub._commit(hub._repo(repo_type, repo_id), revision)
            directories = _directories(commit.files)
            if path and path not in directories:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.oid)
            prefix = f"{path}/" if path else ""
            entries = []
            for directory in sorted(directories):
                rel = directory.removeprefix(prefix)
                if directory.startswith(prefix) and (recursive or "/" not in rel):
                    entries.append(_folder_entry(directory))
            for file_path, stored in sorted(commit.files.items()):
                rel = file_path.removeprefix(prefix)
                if file_path.startswith(prefix) and (recursive or "/" not in rel):
                    entries.append(stored.tree_entry(file_path))
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> None:
        hub = self.hub
        with hub.lock:
            commit = hub._commit(hub._repo(repo_type, repo_id), revision)
            directories = _directories(commit.files)
            entries = []
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    entries.append(commit.files[path].tree_entry(path))
                elif path in directories:
                    entries.append(_folder_entry(path))
        self._json(entries)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.hub
        with hub.lock:
            repo = hub._repo(repo_type, repo_id)
            commit, history = hub._commit(repo, revision), []
            while commit is not None:
                history.append(
                    {"id": commit.oid, "title": commit.title, "message": "", "date": commit.date, "authors": []}
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(history)

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        hub = self.hub
        with hub.lock:
            commit = hub._commit(hub._repo(repo_type, repo_id), revision)
            files = []
            for info in payload["files"]:
                sample = base64.b64decode(info["sample"])
                binary = b"\0" in sample
                lfs = info["path"].endswith(LFS_SUFFIXES) or binary or info["size"] >= LFS_MIN_SIZE
                existing = commit.files.get(info["path"])
                # The client skips files whose oid it can match: sha256 for LFS files, git blob sha1 otherwise.
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else git_blob_oid(existing.content)
                files.append(
                    {
                        "path": info["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
        self._json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict) -> None:
        self._require_auth()
        hub = self.hub
        with hub.lock:
            repo = hub._repo(repo_type, repo_id)
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in repo.lfs_objects:  # objects already stored need no upload (no "actions")
                    href = f"{hub.url}/lfs-objects/{repo_type}/{repo_id}/{obj['oid']}"
                    entry["actions"] = {"upload": {"href": href, "header": {}, "expires_in": 3600}}
                objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, repo_type: str, repo_id: str, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        with self.hub.lock:
            self.hub._repo(repo_type, repo_id).lfs_objects[oid] = body
        self._send(200, headers={"ETag": f'"{oid}"'})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        hub = self.hub
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        with hub.lock:
            repo = hub._repo(repo_type, repo_id)
            branch = revision.removeprefix("refs/heads/")
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent is not None and parent != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    content = repo.lfs_objects.get(value["oid"])
                    if content is None:
                        raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = StoredFile(content, lfs=True)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, f"Unknown commit operation {key}")
            commit = hub._new_commit(repo, header.get("summary") or "update", files, branch)
            commit_url = f"{hub._repo_url(repo)}/commit/{commit.oid}"
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": None})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        with hub.lock:
            commit = hub._commit(hub._repo(repo_type, repo_id), revision)
            stored = commit.files.get(path)
            if stored is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.oid)
        content = stored.content
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{stored.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        status, ranged = 200, re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if ranged and content:
            start, end = ranged.groups()
            if start:
                first, last = int(start), min(int(end) if end else len(content) - 1, len(content) - 1)
            else:  # suffix range: the last N bytes
                first, last = max(len(content) - int(end), 0), len(content) - 1
            if first >= len(content):
                return self._send(416, headers={"Content-Range": f"bytes */{len(content)}"})
            headers["Content-Range"] = f"bytes {first}-{last}/{len(content)}"
            status, content = 206, content[first : last + 1]
        self._send(status, content, headers, "application/octet-stream")
