"""A small Hub-compatible HTTP server for tests (127.0.0.1, in memory, stdlib only).

It implements the endpoints ``huggingface_hub`` calls to create a repo, commit files (regular
uploads, base64 in the NDJSON commit body), read repo info and trees, and resolve files, which is
all ``push_to_hub`` and SAELens' loaders need. Repos are kept per commit, like the real Hub, so the
client's per-commit cache behaves as it does against huggingface.co.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    """One repository: a chain of commits, each a full snapshot of the files."""

    repo_id: str
    private: bool = False
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)

    @property
    def head(self) -> tuple[str, dict[str, bytes]]:
        return self.commits[-1] if self.commits else ("0" * 40, {})


class LocalHub:
    """In-memory Hub; ``url`` is the endpoint to give ``huggingface_hub``."""

    def __init__(self, *, require_token: str | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        self.require_token = require_token
        """When set, write requests need ``Authorization: Bearer <token>`` (else 401)."""
        self.fail_commits = False
        """When True, every commit answers 500 (to test error paths)."""
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Files at the head commit of ``repo_id``."""
        return dict(self.repos[repo_id].head[1])

    def commit(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Add files in a new commit (test helper that bypasses HTTP); returns the commit sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id))
            snapshot = dict(repo.head[1])
            snapshot.update(files)
            sha = hashlib.sha1(f"{repo_id}{time.time_ns()}{len(repo.commits)}".encode()).hexdigest()
            repo.commits.append((sha, snapshot))
            return sha


def _make_handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        # -- plumbing -----------------------------------------------------------------------------
        def _send(
            self, status: int, body: bytes = b"", *, headers: dict | None = None, ctype="application/json"
        ):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), headers=headers)

        def _error(self, status: int, code: str, message: str):
            body = b"" if self.command == "HEAD" else json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            hub.auth_headers.append(auth)
            return hub.require_token is None or auth == f"Bearer {hub.require_token}"

        # -- routes -------------------------------------------------------------------------------
        def do_HEAD(self):
            self._route()

        def do_GET(self):
            self._route()

        def do_POST(self):
            self._route()

        def _route(self):
            parsed = urllib.parse.urlparse(self.path)
            path = urllib.parse.unquote(parsed.path)
            hub.requests.append((self.command, path))
            parts = [p for p in path.split("/") if p]
            if self.command == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if self.command == "POST" and path == "/api/validate-yaml":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets", "spaces"):
                repo_id = f"{parts[2]}/{parts[3]}"
                rest = parts[4:]
                if self.command == "POST" and rest[:1] == ["preupload"]:
                    return self._preupload()
                if self.command == "POST" and rest[:1] == ["commit"]:
                    return self._commit(repo_id)
                if self.command == "GET" and rest[:1] == ["tree"]:
                    return self._tree(repo_id, "/".join(rest[2:]), parsed.query)
                if self.command == "GET" and (not rest or rest[:1] == ["revision"]):
                    return self._info(repo_id)
                return self._error(404, "EntryNotFound", f"unknown API route {path}")
            if parts[:1] == ["datasets"]:
                parts = parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", "/".join(parts[4:]))
            return self._error(404, "EntryNotFound", f"unknown route {path}")

        def _create_repo(self):
            body = json.loads(self._body() or b"{}")
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
            if repo_id in hub.repos:
                return self._error(409, "RepoExists", "You already created this model repo")
            hub.repos[repo_id] = Repo(repo_id, private=bool(body.get("private")))
            return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _preupload(self):
            body = json.loads(self._body() or b"{}")
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]
            ]
            return self._json(200, {"files": files})

        def _commit(self, repo_id: str):
            raw = self._body()
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if hub.fail_commits:
                return self._error(500, "InternalError", "commit failed (test)")
            if repo_id not in hub.repos:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            files: dict[str, bytes] = {}
            deleted: list[str] = []
            for line in raw.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(item["value"]["path"])
                elif item["key"] == "lfsFile":
                    return self._error(400, "BadRequest", "this test hub only accepts regular uploads")
            sha = hub.commit(repo_id, files)
            snapshot = hub.repos[repo_id].commits[-1][1]
            for d in deleted:
                for p in [p for p in snapshot if p == d or p.startswith(d.rstrip("/") + "/")]:
                    del snapshot[p]
            return self._json(
                200,
                {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None},
            )

        def _repo_or_404(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
            return repo

        def _info(self, repo_id: str):
            repo = self._repo_or_404(repo_id)
            if repo is None:
                return None
            sha, files = repo.head
            return self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )

        def _tree(self, repo_id: str, prefix: str, query: str):
            repo = self._repo_or_404(repo_id)
            if repo is None:
                return None
            recursive = "recursive=true" in query.lower() or "recursive=1" in query
            files = repo.head[1]
            prefix = prefix.strip("/")
            base = prefix + "/" if prefix else ""
            entries, dirs = [], set()
            for p, data in sorted(files.items()):
                if not p.startswith(base):
                    continue
                rel = p[len(base) :]
                if recursive or "/" not in rel:
                    entries.append(
                        {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": p}
                    )
                else:
                    dirs.add(base + rel.split("/")[0])
            if prefix and not entries and not dirs:
                return self._error(404, "EntryNotFound", f"{prefix} does not exist")
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
            return self._json(200, entries)

        def _resolve(self, repo_id: str, filename: str):
            repo = self._repo_or_404(repo_id)
            if repo is None:
                return None
            sha, files = repo.head
            if filename not in files:
                return self._error(404, "EntryNotFound", f"{filename} not found in {repo_id}")
            data = files[filename]
            etag = f'"{hashlib.sha1(data).hexdigest()}"'
            return self._send(
                200, data, headers={"X-Repo-Commit": sha, "ETag": etag}, ctype="application/octet-stream"
            )

    return Handler
