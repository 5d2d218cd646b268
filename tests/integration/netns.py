"""Network namespaces for integration tests: created by the test, always torn down.

Small on purpose (the flow and gateway tests build on it)::

    from tests.integration.netns import Namespace, namespaces, veth, require_netns

    require_netns("nft")                       # skip unless root with `ip` (and nft)
    with namespaces("cli", "gw", "srv") as (cli, gw, srv):
        a, b = veth(cli, gw, "10.9.1.2/24", "10.9.1.1/24")
        cli.run("ip", "route", "add", "default", "via", "10.9.1.1")
        gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        p = srv.popen([sys.executable, "-c", "..."])   # killed at teardown
        out = cli.run("curl", "-s", "http://10.9.2.2/", check=False, timeout=5)

- Names are unique per process and call (``sg<role><pid><random>``), so an aborted run
  leaves nothing a rerun collides with; :func:`cleanup_stale` removes namespaces of dead
  test processes.
- Teardown kills what :meth:`Namespace.popen` started (its process group), then every
  process still inside the namespace, then deletes it (which deletes its veth ends).
- Every command has a timeout (default 60 s, a safety net); nothing waits unbounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.wait import DEADLINE, PERIOD
from tests.wait import wait_for as _wait_for

__all__ = ["Namespace", "namespaces", "veth", "require_netns", "cleanup_stale", "wait_for", "DEADLINE", "PREFIX"]

PREFIX = "sg"  # every namespace this module creates starts with it (and names its pid)
_DEFAULT_TIMEOUT = 60.0  # a safety net against a hung command, not a speed limit


def require_netns(*tools: str) -> None:
    """Skip the calling test unless it can create namespaces (root, ``ip``) and ``tools`` exist.
    CI runs as root and installs the tools (tests/setup.sh), so there these never skip."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (as root, tests/setup.sh installs it)")


def wait_for(predicate, timeout: float = DEADLINE, what: str = "the condition", period: float = PERIOD):
    """Poll ``predicate()`` until it returns something truthy; AssertionError after ``timeout``
    (tests/wait.py: pass DEADLINE, the generous default, unless a shorter wait is the point)."""
    return _wait_for(predicate, timeout, what, period)


class Namespace:
    """One network namespace, created on construction (loopback up), deleted by :meth:`close`."""

    def __init__(self, name: str) -> None:
        if len(name) > 64 or not name.replace("-", "").isalnum():
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name
        self._procs: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=_DEFAULT_TIMEOUT)
        self.closed = False
        self.run("ip", "link", "set", "lo", "up")

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = _DEFAULT_TIMEOUT,
            input: str | bytes | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the namespace; text output captured. ``check`` raises with stderr."""
        res = subprocess.run(self.argv(cmd), capture_output=True, timeout=timeout, input=input,
                             text=not isinstance(input, bytes))
        if check and res.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(cmd)} exited {res.returncode}: "
                                 f"{res.stderr}{res.stdout}")
        return res

    def popen(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace in its own process group; stopped at teardown."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(cmd), start_new_session=True, **kw)
        self._procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal one process started by :meth:`popen` and wait for it (SIGKILL after ``timeout``)."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        return p.returncode

    def pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=5)
        return [int(x) for x in res.stdout.split()]

    def close(self) -> None:
        if self.closed:
            return
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self._procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        for pid in self.pids():  # anything else still in there was started by the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=_DEFAULT_TIMEOUT)
        self.closed = True

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def _unique(role: str) -> str:
    if not role.isalpha():
        raise ValueError(f"a role is letters only (the pid follows it in the name): {role!r}")
    return f"{PREFIX}{role}{os.getpid()}x{secrets.token_hex(3)}"


@contextlib.contextmanager
def namespaces(*roles: str) -> Iterator[tuple[Namespace, ...]]:
    """Create one namespace per role (unique names); all are deleted on exit, even on error."""
    made: list[Namespace] = []
    try:
        for role in roles:
            made.append(Namespace(_unique(role)))
        yield tuple(made)
    finally:
        for ns in reversed(made):
            ns.close()


def veth(a: Namespace, b: Namespace, addr_a: str, addr_b: str) -> tuple[str, str]:
    """A veth pair between ``a`` and ``b`` with the given ``addr/prefix`` on each end (v4 or
    v6), both up. Returns the interface names (in ``a``, in ``b``), unique and <= 15 chars."""
    tag = secrets.token_hex(4)
    na, nb = f"va{tag}", f"vb{tag}"
    subprocess.run(["ip", "link", "add", na, "netns", a.name, "type", "veth", "peer", "name", nb,
                    "netns", b.name], check=True, capture_output=True, timeout=_DEFAULT_TIMEOUT)
    for ns, dev, addr in ((a, na, addr_a), (b, nb, addr_b)):
        v6 = ipaddress.ip_interface(addr).version == 6
        # nodad: an address under duplicate address detection cannot be bound for ~2 s.
        ns.run("ip", "addr", "add", addr, "dev", dev, *(("nodad",) if v6 else ()))
        ns.run("ip", "link", "set", dev, "up")
    return na, nb


def cleanup_stale() -> list[str]:
    """Delete namespaces this module made in processes that no longer exist (a killed run)."""
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=5)
    gone = []
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or "x" not in name:
            continue
        digits = "".join(ch for ch in name[len(PREFIX):name.rindex("x")] if ch.isdigit())
        if digits and not os.path.exists(f"/proc/{int(digits)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=5)
            gone.append(name)
    return gone
