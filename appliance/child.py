"""What every forked child of the appliance does, in one place.

The owner process forks DNS workers (appliance/dns/workers.py), the web page
(appliance/web/process.py) and the capture process (appliance/flows/capture.py). Each must stop
when its parent dies, even by SIGKILL (an orphan would keep a port bound or keep serving an
old bundle), must not hold the owner's listening sockets, and is reaped by the owner without
blocking its loop. These were three copies of the same few lines; they are here now.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from appliance.bundles.served import Built

__all__ = ["ChildProcess", "die_with_parent", "close_inherited_sockets", "reap", "signal_child", "stop_child"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ChildProcess(Protocol):
    """The owner's handle on one forked child (the web page, flow inspection): called from
    the owner's loop, none of these may block for long."""

    def poll(self) -> None:
        """Reap the child if it exited; start it again when its restart delay has passed."""
        ...

    def reload(self, built: Built) -> None:
        """A new config or bundle was accepted: the child follows it (SIGHUP or a restart)."""
        ...

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after a grace period) and clean up after it."""
        ...


def die_with_parent(parent: int | None = None) -> bool:
    """Have the kernel SIGTERM this process when its parent dies, even by SIGKILL. Returns
    False when ``parent`` (the pid forked from) is no longer our parent: it died between
    fork() and prctl(), and the signal will never come."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own stop (and the getppid check) still end us
    return parent is None or os.getppid() == parent


def close_inherited_sockets() -> None:
    """Close every socket fd above stderr: the owner's listening DNS sockets are inherited
    through fork, and a child that outlives a stopping owner must not keep the ports bound."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


def reap(pid: int) -> int | None:
    """The exit status (os.waitpid's) of child ``pid`` if it has exited, else None. Never
    blocks. A child already reaped elsewhere counts as exited with status 0."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return None if done == 0 else status


def signal_child(pid: int | None, sig: int) -> None:
    """Send ``sig`` to child ``pid`` (None: no child); one that has exited is not an error."""
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_child(pid: int, grace: float) -> bool:
    """SIGTERM child ``pid``, wait up to ``grace`` seconds for it to exit, then SIGKILL it and
    reap it. True when it had to be killed (it could not clean up after itself)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap(pid) is not None:
            return False
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    return True
