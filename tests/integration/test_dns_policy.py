"""SafeSearch, temporary allows and schedules end to end: dig against the running server,
dnsmasq on 127.0.0.1 as the upstream serving the safe endpoints' records from a test zone."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.policy import temporary_allow as ta
from tests.bundles import make_bundle
from tests.dnsservers import Proc, free_port, need_tools, start_schoolgate, wait_answer
from tests.wait import DEADLINE, wait_for

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
timezone: Europe/Paris
web: {{enabled: false}}
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  upstream_timeout: 500ms
  rate_limit: 0
networks:
  staff: {{cidrs: [127.0.0.3/32], policy: staff}}
policies:
  default:
    block: [gambling]
    safesearch: {{google: true, bing: true, duckduckgo: true, youtube: moderate}}
    schedule:
      - {{days: all, time: "08:00-16:00", block: [local]}}
  staff: {{block: [gambling]}}
"""


def start_upstream(tmp: Path, port: int) -> Proc:
    """dnsmasq serving the safe endpoints (test zone addresses) and one ordinary name."""
    need_tools("dnsmasq", "dig")
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--pid-file=",
            "--host-record=forcesafesearch.google.com,192.0.2.120,2001:db8::120",
            "--host-record=restrictmoderate.youtube.com,192.0.2.121",
            "--host-record=strict.bing.com,192.0.2.122", "--host-record=safe.duckduckgo.com,192.0.2.123",
            "--host-record=www.google.com,198.51.100.1", "--address=/allowed.test/192.0.2.10",
            "--address=/casino.test/192.0.2.66",
            "--local-ttl=120", "--user=root"]
    p = Proc(argv, tmp / f"dnsmasq-{port}.out")
    wait_answer(port, "allowed.test", timeout=DEADLINE, proc=p)
    return p


def dig(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1") -> list[tuple[str, str, str]]:
    out = subprocess.run(["dig", "+norecurse", "+noall", "+answer", "+comments", "+tries=1", "+time=2",
                          "-b", source, "-p", str(port), "@127.0.0.1", name, rdtype],
                         capture_output=True, text=True, timeout=10).stdout
    rows = []
    for line in out.splitlines():
        if line.startswith(";; ->>HEADER<<-"):
            rows.append(("status", line.split("status: ")[1].split(",")[0], ""))
        elif line and not line.startswith(";"):
            f = line.split()
            rows.append((f[0].rstrip("."), f[3], f[4].rstrip(".")))
    return rows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    make_bundle(tmp / "bundle", 3)
    up, port = free_port(), free_port()
    upstream = start_upstream(tmp, up)
    cfg = tmp / "schoolgate.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp, port=port, upstream=up))
    yield tmp, cfg, port, up
    upstream.stop()


def test_safesearch_cname_and_address(env) -> None:
    tmp, cfg, port, _up = env
    sg = start_schoolgate(cfg, tmp, port)
    try:
        rows = dig(port, "www.google.com")
        assert ("status", "NOERROR", "") in rows
        assert ("www.google.com", "CNAME", "forcesafesearch.google.com") in rows
        assert ("forcesafesearch.google.com", "A", "192.0.2.120") in rows
        assert ("forcesafesearch.google.com", "AAAA", "2001:db8::120") in dig(port, "www.google.co.uk", "AAAA")
        for _ in range(2):  # the second time from the cache (fast path hands it to Python)
            rows = dig(port, "m.youtube.com")
            assert ("m.youtube.com", "CNAME", "restrictmoderate.youtube.com") in rows
            assert ("restrictmoderate.youtube.com", "A", "192.0.2.121") in rows
        assert ("strict.bing.com", "A", "192.0.2.122") in dig(port, "www.bing.com")
        assert ("safe.duckduckgo.com", "A", "192.0.2.123") in dig(port, "duckduckgo.com")
        # Staff has no SafeSearch: the real name, answered by the upstream.
        assert ("www.google.com", "A", "198.51.100.1") in dig(port, "www.google.com", source="127.0.0.3")
    finally:
        sg.stop()


def test_temporary_allow_applies_and_expires(env) -> None:
    tmp, cfg, port, _up = env
    sg = start_schoolgate(cfg, tmp, port)
    try:
        assert ("status", "NXDOMAIN", "") in dig(port, "casino.test")
        now = datetime.now(UTC)
        until = now + timedelta(seconds=8)  # long enough to be seen in force on a loaded machine
        ta.add(tmp / "state", "casino.test", "default", until, "test", now)
        wait_for(lambda: ("status", "NXDOMAIN", "") not in dig(port, "casino.test"), what="the allow in force")
        assert ("casino.test", "A", "192.0.2.66") in dig(port, "casino.test")  # forwarded now
        assert ("status", "NXDOMAIN", "") in dig(port, "casino.test", source="127.0.0.3")  # not for staff
        wait_for(lambda: ("status", "NXDOMAIN", "") in dig(port, "casino.test"), what="the allow to expire")
        # not before its time (the file keeps whole seconds)
        assert datetime.now(UTC) >= until - timedelta(seconds=1)
    finally:
        sg.stop()
        ta.remove(tmp / "state", "casino.test", "default")


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


SCHEDULED = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
timezone: Europe/Paris
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  upstream_timeout: 500ms
  rate_limit: 0
  block_ttl: 0
policies:
  default:
    block: []
    schedule:
      - {{days: mon-fri, time: "08:00-16:00", block: [gambling]}}
"""


def test_schedule_switch_with_injected_clock(env, tmp_path: Path) -> None:
    """The service in this process with its wall clock injected, dig from outside:
    gambling is blocked only Monday to Friday, 08:00-16:00 Paris time."""
    from appliance.compose import Assembly
    from appliance.dns.service import Service

    tmp, _cfg, _port, up = env
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SCHEDULED.format(tmp=tmp, port=port, upstream=up))
    clock = FakeClock(datetime(2024, 4, 1, 5, 59, tzinfo=UTC))  # Monday 07:59 Paris

    async def main() -> list[str]:
        svc = Service(Assembly(str(cfg)), owner=False)
        svc.wall_clock = clock
        ready = asyncio.Event()
        task = asyncio.create_task(svc.run(ready))
        await asyncio.wait_for(ready.wait(), DEADLINE)
        loop = asyncio.get_running_loop()
        seen = []

        async def status_after(t: datetime) -> str:
            clock.t = t
            ps = svc.built.policy_state
            deadline = loop.time() + DEADLINE
            while ps.key != ps.state_key(t):  # until a WATCH_PERIOD tick (0.5 s) has applied ``t``
                if loop.time() > deadline:
                    raise AssertionError(f"the policies for {t} were never applied")
                await asyncio.sleep(0.05)
            rows = await loop.run_in_executor(None, dig, port, "casino.test")
            return next(r[1] for r in rows if r[0] == "status")

        try:
            seen.append(await status_after(clock.t))
            seen.append(await status_after(datetime(2024, 4, 1, 6, 0, tzinfo=UTC)))  # 08:00
            seen.append(await status_after(datetime(2024, 4, 1, 14, 0, tzinfo=UTC)))  # 16:00
            seen.append(await status_after(datetime(2024, 4, 6, 9, 0, tzinfo=UTC)))  # Saturday 11:00
        finally:
            svc.stop()
            await asyncio.wait_for(task, DEADLINE)
        return seen

    assert asyncio.run(main()) == ["NOERROR", "NXDOMAIN", "NOERROR", "NOERROR"]
