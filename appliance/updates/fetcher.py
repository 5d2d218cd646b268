"""Downloads for the updater: a python-tuf fetcher with a hard deadline and a size cap.

python-tuf's own fetchers bound the gap between two reads, not the whole download: a
server trickling one byte a second keeps a read going for ever ("slow retrieval" attack).
This fetcher sets every socket timeout to ``min(gap, time left)`` against one deadline for
the whole update run, reads with ``read1`` (one ``recv`` at most, so the deadline is checked
between small reads), and stops any response past ``max_bytes`` (also refused up front when
Content-Length announces it). No redirects, no proxies, no compression: a TUF repository is
static files, and everything it serves is verified anyway.

``file://`` URLs read a repository from disk (a USB stick at an air-gapped site) under the
same caps.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from filters.errors import UpdateError

__all__ = ["HttpFetcher", "GAP_TIMEOUT", "READ_CHUNK"]

# A repository that sends nothing for 30 s is down or hostile; real CDNs answer in < 1 s.
GAP_TIMEOUT = 30.0
# Small reads keep the deadline check frequent; 64 KiB is still a handful of syscalls per MB.
READ_CHUNK = 64 << 10


class _Watchdog:
    """Shuts a socket down at the deadline, whatever read it is blocked in.

    Socket timeouts bound each recv, not their sum: a server trickling its headers or body
    one byte per 29 s never trips a 30 s timeout. Shutting the socket down from a timer
    thread ends any blocked read at once.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock = sock
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


class HttpFetcher(FetcherInterface):
    """GET over http(s) (or read a file:// URL) within ``deadline`` and ``max_bytes``.

    ``deadline`` is an absolute time on ``clock`` (``time.monotonic`` by default) shared by
    every request of one update run. ``spool_dir`` is where downloads are buffered before
    TUF verifies them (the state partition, not a RAM-backed /tmp).
    """

    def __init__(self, *, deadline: float, max_bytes: int, gap_timeout: float = GAP_TIMEOUT,
                 spool_dir: str | Path | None = None, clock: Callable[[], float] = time.monotonic,
                 user_agent: str = "schoolgate-updater", repository: str | None = None) -> None:
        self.deadline = deadline
        self.repository = repository  # its URL as configured, for messages
        self.max_bytes = max_bytes
        self.gap_timeout = gap_timeout
        self.spool_dir = str(spool_dir) if spool_dir is not None else None
        self.clock = clock
        self.user_agent = user_agent
        self.bytes_received = 0  # over the fetcher's life: what one update cost
        self.last_url: str | None = None  # named in errors: TUF's own messages do not say which file
        self._file_cap: int | None = None  # the current download_file's max_length

    def _timeout(self, url: str) -> float:
        left = self.deadline - self.clock()
        if left <= 0:
            raise tuf_exc.SlowRetrievalError(f"update deadline passed while fetching {url}")
        return min(self.gap_timeout, left)

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        parts = urlsplit(url)
        if parts.scheme == "file":
            return self._file_chunks(Path(unquote(parts.path)))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise tuf_exc.DownloadError(f"unsupported URL {url!r}")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self._timeout(url))
        dog = None
        try:
            conn.connect()
            # Our own reference: http.client drops conn.sock when the server says
            # "Connection: close", but the response keeps reading from this socket.
            sock = conn.sock
            dog = _Watchdog(sock, self.deadline - self.clock())
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path or "/", headers={
                "User-Agent": self.user_agent, "Accept-Encoding": "identity"})
            sock.settimeout(self._timeout(url))
            resp = conn.getresponse()
        except TimeoutError as exc:
            self._close(dog, conn)
            raise tuf_exc.SlowRetrievalError(f"no answer from {parts.netloc} in time") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._close(dog, conn)
            if dog is not None and dog.fired:
                raise tuf_exc.SlowRetrievalError("the update's deadline passed before the answer") from exc
            if dog is None and isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
                # refused, unreachable, unresolvable: no connection at all
                raise self._unreachable(exc, parts.hostname, f"{parts.scheme}://{parts.netloc}/") from exc
            raise tuf_exc.DownloadError(f"cannot fetch {url}: {exc}") from exc
        if resp.status != 200:
            self._close(dog, conn, resp)
            raise tuf_exc.DownloadHTTPError(f"HTTP {resp.status} {resp.reason} for {url}", resp.status)
        length = resp.getheader("Content-Length")
        cap = min(self.max_bytes, self._file_cap or self.max_bytes)
        if length is not None and length.isdigit() and int(length) > cap:
            self._close(dog, conn, resp)
            raise tuf_exc.DownloadLengthMismatchError(
                f"the server announces {int(length):,} bytes; at most {cap:,} are allowed")
        return self._http_chunks(url, conn, sock, resp, dog)

    def _unreachable(self, exc: OSError, host: str, base: str) -> UpdateError:
        """One message for a repository that cannot be connected to. python-tuf wraps it in
        a DownloadError; signatures/updater.py unwraps it again, so it reads as said here."""
        reason = exc.strerror or str(exc)
        reason = reason[:1].lower() + reason[1:]
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve {host}: {reason}"
        return UpdateError(f"cannot reach the update repository {self.repository or base}: {reason}")

    @staticmethod
    def _close(dog: _Watchdog | None, conn: http.client.HTTPConnection,
               resp: http.client.HTTPResponse | None = None) -> None:
        if dog is not None:
            dog.cancel()
        if resp is not None:
            resp.close()
        conn.close()

    def _http_chunks(self, url: str, conn: http.client.HTTPConnection, sock: socket.socket,
                     resp: http.client.HTTPResponse, dog: _Watchdog) -> Iterator[bytes]:
        got = 0
        try:
            while True:
                try:
                    sock.settimeout(self._timeout(url))
                    chunk = resp.read1(READ_CHUNK)
                except (TimeoutError, OSError, http.client.HTTPException) as exc:
                    if dog.fired or self.clock() >= self.deadline:
                        raise tuf_exc.SlowRetrievalError(f"the update's deadline passed after {got:,} bytes") from exc
                    if isinstance(exc, (TimeoutError, socket.timeout)):
                        raise tuf_exc.SlowRetrievalError(
                            f"no data for {self.gap_timeout:g} s after {got:,} bytes") from exc
                    raise tuf_exc.DownloadError(f"connection failed: {exc}") from exc
                if dog.fired:  # a shut-down socket reads as a clean end: it is not one
                    raise tuf_exc.SlowRetrievalError(f"the update's deadline passed after {got:,} bytes")
                if not chunk:
                    return
                got += len(chunk)
                self.bytes_received += len(chunk)
                if got > self.max_bytes:
                    raise tuf_exc.DownloadLengthMismatchError(f"more than the {self.max_bytes:,}-byte cap")
                yield chunk
        finally:
            self._close(dog, conn, resp)

    def _file_chunks(self, path: Path) -> Iterator[bytes]:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise tuf_exc.DownloadHTTPError(f"{path} not found", 404) from None
        except OSError as exc:
            raise tuf_exc.DownloadError(f"cannot read {path}: {exc}") from exc
        return self._read_file(f, path)

    def _read_file(self, f: IO[bytes], path: Path) -> Iterator[bytes]:
        got = 0
        with f:
            while chunk := f.read(READ_CHUNK):
                self._timeout(str(path))
                got += len(chunk)
                self.bytes_received += len(chunk)
                if got > self.max_bytes:
                    raise tuf_exc.DownloadLengthMismatchError(f"{path} is larger than {self.max_bytes:,} bytes")
                yield chunk

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO]:
        """As FetcherInterface.download_file, but spooled in ``spool_dir``."""
        got = 0
        with tempfile.TemporaryFile(dir=self.spool_dir) as tmp:
            self._file_cap = max_length  # lets a too-large Content-Length fail before the body
            try:
                chunks = self.fetch(url)
            finally:
                self._file_cap = None
            try:
                for chunk in chunks:
                    got += len(chunk)
                    if got > max_length:
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"more than the {max_length:,} bytes the metadata allows")
                    tmp.write(chunk)
            finally:
                close = getattr(chunks, "close", None)
                if close:  # drop the connection now, not at garbage collection
                    close()
            tmp.seek(0)
            yield tmp
