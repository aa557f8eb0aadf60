"""A real HTTP server on 127.0.0.1 for the weights tests: plain files with Range and If-Range as
real servers do them (a strong ETag per version of a file; a Range whose If-Range names another
version gets the whole file, a Range past the end a 416 with `Content-Range: bytes */N`), the
hub's resolve/<revision>/<file> routes (HEAD with X-Repo-Commit, ETag and size; GET), optional
basic auth, and switches that cut the next transfer of a file halfway, as a dropped connection
would, or ignore If-Range, as some caches do."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def etag(body: bytes) -> str:
    """A strong ETag naming this version of a file, as the hub (and most servers) give one."""
    return f'"{hashlib.sha256(body).hexdigest()}"'


class WeightsServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.cut_next: set[str] = set()  # paths whose next GET stops after half the body
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.if_ranges: list[str] = []  # the If-Range header of each request with a Range
        self.ignore_if_range = False  # answer a Range as if the file had not changed
        self.auth: tuple[str, str] | None = None  # (user, password) every request must carry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _body(self):
                path = self.path.split("?", 1)[0]
                server.requests.append((self.command, path, self.headers.get("Range", "")))
                if self.headers.get("Range"):
                    server.if_ranges.append(self.headers.get("If-Range", ""))
                return path, server.files.get(path)

            def _authorised(self):
                if server.auth is None:
                    return True
                expected = "Basic " + base64.b64encode(":".join(server.auth).encode()).decode()
                if self.headers.get("Authorization") == expected:
                    return True
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="weights"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def _headers(self, path, body, start=0):
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag(body))
                if "/resolve/" in path:
                    self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                return True

            def do_HEAD(self):
                path, body = self._body()
                if self._authorised():
                    self._headers(path, body)

            def do_GET(self):
                path, body = self._body()
                if not self._authorised():
                    return
                start = 0
                asked = self.headers.get("Range", "")
                if_range = self.headers.get("If-Range")
                same_version = if_range is None or if_range == etag(body or b"") or server.ignore_if_range
                if asked.startswith("bytes=") and body is not None and same_version:
                    start = int(asked[6:].split("-", 1)[0] or 0)
                if body is not None and start >= len(body) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not self._headers(path, body, start):
                    return
                if path in server.cut_next:
                    server.cut_next.discard(path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def mirror_path(name: str) -> str:
    """The URL path the loopback mirror (SPATIOTEMPORAL_WEIGHTS_MIRROR) serves an entry's file at."""
    from spatiotemporal.weights import get_entry

    return "/" + get_entry(name).url.split("://", 1)[1].split("?", 1)[0]


def saved(obj) -> bytes:
    """`obj` as torch.save writes it, as every publisher here saves its checkpoints."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def serve(server: WeightsServer, name: str, obj) -> bytes:
    """`obj` saved with torch.save, served where the mirror has the entry's URL; returns the body."""
    body = saved(obj)
    server.files[mirror_path(name)] = body
    return body


def as_published(name: str, state_dict: dict):
    """Our model's `state_dict` as the publisher of the plain-URL entry `name` lays out its file:
    torchvision's bare state dict, SlowFast's `.pyth` ({"model_state": ..., "epoch"}: its names),
    Video Swin's `.pth` ({"meta", "state_dict"}: mmaction2's names)."""
    from spatiotemporal.convert import official_slowfast, official_videoswin
    from spatiotemporal.weights import get_entry

    layout = get_entry(name).layout
    if layout == "torchvision":
        return dict(state_dict)
    if layout == "slowfast":
        return {"model_state": official_slowfast.from_ours(state_dict), "epoch": 200}
    if layout == "videoswin":
        return {"meta": {}, "state_dict": official_videoswin.from_ours(state_dict)}
    raise ValueError(f"{name}: no generator for the {layout!r} layout here")


# The fixtures every weights test uses: a server started per test, and a cache, hub cache and
# torch home of the test's own, reached through the mirror and the hub endpoint on that server.
# Test modules import them by name.
@pytest.fixture
def server():
    s = WeightsServer()
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch, server):
    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPATIOTEMPORAL_WEIGHTS_MIRROR", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("SPATIOTEMPORAL_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"
