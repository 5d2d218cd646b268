"""A real HTTP server on 127.0.0.1 serving a repository directory, with injectable faults.

The attack tests run the updater against this over real sockets. A fault is keyed by a URL
path pattern (fnmatch, e.g. ``/targets/*.bundle.tar``) and replaces what the file server
would send: other bytes, a status, an endless body, or a trickle.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Fault:
    kind: str  # "bytes" | "status" | "endless" | "slow" | "slow-headers" | "huge-length" | "paced"
    data: bytes = b""
    status: int = 200
    interval: float = 0.0  # slow: seconds between bytes; paced: between chunks
    chunk: int = 64 << 10  # paced: bytes per write (a real file, served at chunk / interval B/s)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-request is what half of these tests are about


class RepoServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        # host/port: the gateway test bed binds an address inside its own namespace.
        self.root = Path(root)
        self.faults: dict[str, Fault] = {}
        self.requests: list[str] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                try:
                    server._answer(self)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass  # the client gave up: exactly what the caps are for

        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def fault(self, pattern: str, fault: Fault) -> None:
        self.faults[pattern] = fault

    def replace(self, pattern: str, data: bytes) -> None:
        self.fault(pattern, Fault("bytes", data))

    def clear(self) -> None:
        self.faults.clear()

    def fetched(self, pattern: str) -> list[str]:
        return [p for p in self.requests if fnmatch.fnmatch(p, pattern)]

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        fault = next((f for pat, f in self.faults.items() if fnmatch.fnmatch(path, pat)), None)
        if fault is None:
            file = (self.root / path.lstrip("/")).resolve()
            if self.root.resolve() not in file.parents or not file.is_file():
                return self._send(h, 404, b"not found")
            return self._send(h, 200, file.read_bytes())
        if fault.kind == "bytes":
            return self._send(h, 200, fault.data)
        if fault.kind == "status":
            return self._send(h, fault.status, b"")
        if fault.kind == "endless":
            # No Content-Length: the body ends when the connection does, i.e. never.
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            block = b"\0" * 65536
            while not self.stopping.is_set():
                h.wfile.write(block)
            return None
        if fault.kind == "slow":
            file = self.root / path.lstrip("/")
            data = fault.data or (file.read_bytes() if file.is_file() else b"x" * 4096)
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Connection", "close")  # the client then holds no socket of its own
            h.end_headers()
            for i in range(len(data)):
                if self.stopping.is_set():
                    return None
                h.wfile.write(data[i:i + 1])
                h.wfile.flush()
                time.sleep(fault.interval)
            return None
        if fault.kind == "paced":  # the real file, at a bounded rate (the power-loss test's delay hook)
            file = self.root / path.lstrip("/")
            if not file.is_file():
                return self._send(h, 404, b"not found")
            data = fault.data or file.read_bytes()
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for i in range(0, len(data), fault.chunk):
                if self.stopping.is_set():
                    return None
                h.wfile.write(data[i:i + fault.chunk])
                h.wfile.flush()
                time.sleep(fault.interval)
            return None
        if fault.kind == "huge-length":  # claims a terabyte, then stalls
            h.send_response(200)
            h.send_header("Content-Length", str(1 << 40))
            h.end_headers()
            self.stopping.wait(10)
            return None
        if fault.kind == "slow-headers":
            # Each byte well inside any gap timeout; the headers never end.
            while not self.stopping.is_set():
                h.wfile.write(b"X")
                h.wfile.flush()
                time.sleep(fault.interval)
            return None
        raise ValueError(fault.kind)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
