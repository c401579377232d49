"""A local HTTP server that speaks the hub's file-resolve protocol, for HF_ENDPOINT.

What huggingface_hub expects (file_download.py, get_hf_file_metadata / http_get):

- ``HEAD /{repo}/resolve/{revision}/{filename}``: ``X-Repo-Commit``, ``ETag``; for an LFS file
  a redirect to the storage URL with ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``.
- ``GET`` on the same path redirects to the storage URL, which serves the bytes with
  ``Content-Length`` and honours ``Range: bytes=N-`` with ``206`` and ``Content-Range``.
- A missing file: ``404`` with ``X-Error-Code: EntryNotFound``.

Plain files for ``url`` sources live at ``/files/{name}`` on the storage origin (ETag: the
sha256 of their content; ``Range`` and ``If-Range`` honoured), and can be replaced in place.

Knobs for failure tests: drop the connection after N bytes on the first transfer of a file,
serve other bytes than advertised, a transfer rate limit, and a request log (with the body
bytes each request was sent) to assert on.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
STORE_RE = re.compile(r"^/lfs-store/(?P<sha>[0-9a-f]{64})$")
FILES_RE = re.compile(r"^/files/(?P<name>[^/]+)$")
SEND_CHUNK = 32 * 1024


def gguf_bytes(size: int, seed: int = 0) -> bytes:
    """Bytes that start like a GGUF file (magic + version) and are otherwise random."""
    return b"GGUF\x03\x00\x00\x00" + random.Random(seed).randbytes(size - 8)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class HubFile:
    content: bytes
    advertised_sha256: str | None = None  # None: the true sha256 of `content`
    served: bytes | None = None  # bytes actually sent (a corrupt store); None: `content`
    cut_after: int | None = None  # first full GET drops the connection after this many bytes

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.content).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    sent: int = 0  # body bytes written to the client


@dataclass
class FakeHub:
    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    plain: dict[str, HubFile] = field(default_factory=dict)  # /files/{name}
    url: str = ""
    store_url: str = ""  # another origin, like the hub's CDN: metadata stays on the redirect
    rate: float | None = None  # body bytes per second, per request; None: as fast as possible
    _by_sha: dict[str, HubFile] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: str, filename: str, content: bytes, **kw: object) -> HubFile:
        f = HubFile(content=content, **kw)  # type: ignore[arg-type]
        self.files[(repo, filename)] = f
        self._by_sha[f.sha256] = f
        return f

    def publish(self, name: str, content: bytes) -> str:
        """Serve ``content`` at ``/files/{name}`` (replacing what was there); returns its URL."""
        self.plain[name] = HubFile(content=content)
        return f"{self.store_url}/files/{name}"

    def log(self, method: str, path: str, rng: str | None) -> Request:
        req = Request(method, path, rng)
        with self._lock:
            self.requests.append(req)
        return req

    def sent(self, suffix: str = "") -> int:
        """Body bytes sent by GETs whose path ends with ``suffix``."""
        return sum(r.sent for r in self.gets(suffix))

    def gets(self, suffix: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]


def make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _resolve(self) -> None:
            m = RESOLVE_RE.match(self.path.split("?")[0])
            if not m:
                self._send(404, {"X-Error-Code": "RepoNotFound"}, b"not found")
                return
            f = hub.files.get((m["repo"], m["file"]))
            if f is None:
                self._send(
                    404,
                    {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT},
                    b"Entry not found",
                )
                return
            self._send(
                302,
                {
                    "Location": f"{hub.store_url}/lfs-store/{f.sha256}",
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{f.sha256}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(len(f.content)),
                },
            )

        def _write_body(self, body: bytes, req: Request) -> None:
            for i in range(0, len(body), SEND_CHUNK):
                piece = body[i : i + SEND_CHUNK]
                self.wfile.write(piece)
                req.sent += len(piece)
                if hub.rate:
                    time.sleep(len(piece) / hub.rate)

        def _store(self, req: Request) -> None:
            path = self.path.split("?")[0]
            m = STORE_RE.match(path)
            f = hub._by_sha.get(m["sha"]) if m else None
            if f is None and (fm := FILES_RE.match(path)):
                f = hub.plain.get(fm["name"])
            if f is None:
                self._send(404, {}, b"no such object")
                return
            data = f.served if f.served is not None else f.content
            etag = f'"{f.sha256}"'
            start = 0
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if rng and (if_range is None or if_range == etag):
                rm = re.match(r"bytes=(\d+)-", rng)
                start = int(rm.group(1)) if rm else 0
            if start > len(data):
                self._send(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            body = data[start:]
            headers = {
                "Content-Length": str(len(body)),
                "Accept-Ranges": "bytes",
                "ETag": etag,
                "Content-Type": "application/octet-stream",
            }
            status = 200
            if start:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if self.command == "HEAD":
                self._send(status, headers)
                return
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            cut = f.cut_after
            if cut is not None and start == 0:
                f.cut_after = None  # only the first transfer is cut
                self._write_body(body[:cut], req)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._write_body(body, req)

        def _handle(self) -> None:
            req = hub.log(self.command, self.path, self.headers.get("Range"))
            try:
                if self.path.startswith(("/lfs-store/", "/files/")):
                    self._store(req)
                else:
                    self._resolve()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (a killed pull)

        do_GET = _handle  # noqa: N815
        do_HEAD = _handle  # noqa: N815

    return Handler


class HubServer:
    """Run a FakeHub on 127.0.0.1 (random ports: the hub and its storage origin) in threads."""

    def __init__(self) -> None:
        self.hub = FakeHub()
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.hub)) for _ in "ab"]
        urls = []
        for httpd in self.servers:
            httpd.daemon_threads = True
            host, port = httpd.server_address[:2]
            urls.append(f"http://{host}:{port}")
        self.hub.url, self.hub.store_url = urls
        self.threads = [
            threading.Thread(target=h.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for h in self.servers
        ]

    def __enter__(self) -> FakeHub:
        for t in self.threads:
            t.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        for httpd in self.servers:
            httpd.shutdown()
            httpd.server_close()
        for t in self.threads:
            t.join(timeout=5)
