"""The web server as a forked child of the appliance's owner process.

Why a forked child: a bug or a flood in the web page cannot take DNS down (DNS runs in
other processes), and forking — rather than spawning a new interpreter — keeps what the
owner already has: the imported code and jitted kernels, the bundle's maps (the block page
looks names up with the same matcher) and the anonymous shared mmap of the counters
(``appliance.observe.stats.SharedStats``), which a fresh process could not reach. It works the same
under ``Service`` (dns.workers = 1; the owner is the DNS server and forks from inside its
event loop) and under the ``Supervisor`` (dns.workers > 1).

The child resets every signal handler and the event loop's wakeup fd it inherited (else a
signal to the child would wake the *parent's* loop through the shared socketpair), closes
the DNS sockets it inherited (so a stopped appliance never leaves a port bound by an orphan),
asks the kernel for SIGTERM when the parent dies (PR_SET_PDEATHSIG, appliance/child.py) and checks its parent
every second as a second line. It binds its own listening sockets; a bind failure ends the
child with an error logged, and the owner restarts it with a growing delay (1 s doubling to
RESTART_MAX) — DNS keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from appliance.bundles.served import Builder, Built
from appliance.child import die_with_parent, reap, signal_child, stop_child
from appliance.config.load import Config
from appliance.observe.stats import SharedStats

if TYPE_CHECKING:
    from appliance.web.app import WebApp

__all__ = ["WebProcess", "start_web", "serve", "bind", "RESTART_MIN", "RESTART_MAX"]

log = logging.getLogger("schoolgate")

RESTART_MIN, RESTART_MAX = 1.0, 60.0
# A child that lived this long was healthy: its next crash restarts it after RESTART_MIN again.
_HEALTHY = 60.0
_STOP_GRACE = 5.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)


def bind(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(128)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


async def serve(app: WebApp, cfg: Config, parent: int | None = None, ready: asyncio.Event | None = None) -> int:
    """Run the web listeners of ``cfg`` for ``app`` until SIGTERM/SIGINT (or the parent is gone)."""
    from appliance.web.server import WebServer  # see _child
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    servers = []
    main = WebServer(app.main)
    await main.start(bind(*cfg.web.listen))
    servers.append(main)
    for hp in cfg.web.blockpage_listen:
        bp = WebServer(app.blockpage)
        await bp.start(bind(*hp))
        servers.append(bp)
    log.info("web ready", extra={"web_listen": "{}:{}".format(*cfg.web.listen),
                                 "blockpage_listen": [f"{h}:{p}" for h, p in cfg.web.blockpage_listen],
                                 "admin_login": bool(cfg.web.admin_password_hash)})
    if ready is not None:
        ready.set()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            if parent is not None and os.getppid() != parent:
                log.warning("web: the appliance is gone; stopping")
                break
    for s in servers:
        await s.stop()
    return 0


def _child(builder: Builder, built: Built, stats: SharedStats | None, parent: int) -> int:
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    if not die_with_parent(parent):  # not Linux: the getppid check in serve() still ends us
        return 0
    cfg = built.cfg
    # Imported here, in the child: the pages, the HTTP server and prometheus_client are ~13 MB
    # that the owner process (the DNS server) would otherwise carry without using them.
    from appliance.web.app import WebApp

    app = WebApp(cfg, builder, stats=stats, built=built)
    try:
        return asyncio.run(serve(app, cfg, parent))
    except OSError as exc:
        log.error("web: cannot listen: %s (the page is off; DNS keeps serving; retrying)", exc,
                  extra={"web_listen": "{}:{}".format(*cfg.web.listen)})
        return 1


class WebProcess:
    """The owner's handle: start, poll (restart a dead child), reload, stop."""

    def __init__(self, builder: Builder, built: Built, stats: SharedStats | None = None,
                 close_in_child: Iterable[socket.socket] = ()) -> None:
        self.builder = builder
        self.cfg = built.cfg
        self.stats = stats
        self.built = built
        self.close_in_child = list(close_in_child)
        self.pid: int | None = None
        self.restarts = 0
        self._started = 0.0
        self._delay = RESTART_MIN
        self._next_start = 0.0

    def start(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no handler of ours runs in the child
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            log.error("web: cannot fork: %s", exc)
            self._next_start = time.monotonic() + self._delay
            return
        if pid == 0:
            code = 1
            try:
                for s in self.close_in_child:
                    try:
                        s.close()
                    except OSError:
                        pass
                code = _child(self.builder, self.built, self.stats, os.getppid())
            except BaseException:
                log.exception("web process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.pid = pid
        self._started = time.monotonic()

    def poll(self) -> None:
        """Reap a dead child and start a new one when its delay has passed. Never blocks."""
        now = time.monotonic()
        if not self.cfg.web.enabled:
            return
        if self.pid is not None:
            status = reap(self.pid)
            if status is None:
                return
            self._delay = RESTART_MIN if now - self._started > _HEALTHY else min(self._delay * 2, RESTART_MAX)
            log.error("web process (pid %d) exited with status %d; restarting in %.0f s", self.pid,
                      os.waitstatus_to_exitcode(status), self._delay)
            self.pid = None
            self._next_start = now + self._delay
            return
        if now >= self._next_start:
            self.restarts += 1
            self.start()

    def reload(self, built: Built) -> None:
        """A new config: the child reloads it (SIGHUP), starts or restarts when web: changed."""
        cfg = built.cfg
        changed = cfg.web != self.cfg.web
        self.cfg, self.built = cfg, built
        if not cfg.web.enabled:
            self.stop()
        elif changed or self.pid is None:
            self.stop()
            self.start()
        else:
            self._kill(signal.SIGHUP)

    def _kill(self, sig: int) -> None:
        signal_child(self.pid, sig)

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        stop_child(pid, _STOP_GRACE)


def start_web(builder: Builder, built: Built, stats: SharedStats | None = None,
              close_in_child: Iterable[socket.socket] = ()) -> WebProcess:
    """The web process's handle, forked at once when the config enables it (a later reload
    that enables it starts it)."""
    w = WebProcess(builder, built, stats, close_in_child)
    if built.cfg.web.enabled:
        w.start()
    return w
