"""Reliability faults on the gateway test bed (tests/integration/testbed.py): the appliance must
keep answering, and its status must say what is wrong. Each test leaves the bed as it found
it (``bed.ensure_running()`` at the start of the next one repairs what a failure left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.rcode  # noqa: E402

from signatures.keys import Keyring  # noqa: E402
from signatures.repository import publish  # noqa: E402
from tests.integration.netns import DEADLINE, wait_for  # noqa: E402
from tests.integration.testbed import (  # noqa: E402
    HTTPS_ADDRS,
    STALE_ADDR,
    STALE_NAME,
    QueryLoop,
    bed,  # noqa: F401
    record_metric,
)
from tests.repo_server import Fault  # noqa: E402

pytestmark = pytest.mark.slow


def addresses(r) -> list[str]:
    return [rd.to_text() for rrset in r.answer for rd in rrset]


def upstream_errors(bed) -> int | None:
    st = bed.api_status()
    if not st or not st["dns"].get("counters_available"):
        return None
    return int(st["dns"].get("upstream_errors") or 0)


def test_upstream_down_serve_stale_then_servfail_then_recovery(bed) -> None:
    bed.ensure_running()
    errors_before = upstream_errors(bed)
    # TTL 1 from the test zone: cached, soon expired. Each DNS worker has its own cache and
    # every query comes from a fresh source port (the kernel picks the worker by its hash):
    # a dozen queries put the name in both workers' caches (missed by one: p ~ 2 * 2^-12).
    for _ in range(12):
        r = bed.ask("client", STALE_NAME)
        assert addresses(r) == [STALE_ADDR] and r.answer[0].ttl <= 1, r.to_text()
    bed.pause_upstream()
    try:
        # once expired (TTL 1 s), every upstream down: the stale answer, TTL 30 (RFC 8767) —
        # polled until it comes (a SERVFAIL first would mean no stale answer was served)
        r = wait_for(lambda: (r := bed.ask("client", STALE_NAME)) and (r.rcode() == dns.rcode.SERVFAIL
                     or r.answer[0].ttl == 30) and r, DEADLINE, "the stale answer (TTL 30)")
        assert addresses(r) == [STALE_ADDR] and r.answer[0].ttl == 30, r.to_text()
        r = bed.ask("staff", "never-asked.allowed.test", timeout=30)
        assert r.rcode() == dns.rcode.SERVFAIL  # nothing cached, no upstream: SERVFAIL, not silence
        assert bed.rcode("client", "casino.test") == "NXDOMAIN"  # filtering never needs upstreams
        # past stale_ttl (4 s in the bed's config): nothing left to serve -> SERVFAIL
        wait_for(lambda: bed.ask("client", STALE_NAME).rcode() == dns.rcode.SERVFAIL, DEADLINE,
                 "SERVFAIL once the stale entry is gone")
        errors_during = upstream_errors(bed)
        if errors_before is not None:  # the status page says what is wrong
            assert errors_during is not None and errors_during > errors_before
    finally:
        bed.resume_upstream()
    wait_for(lambda: (lambda r: r is not None and addresses(r) == [STALE_ADDR])(bed.answers("client", STALE_NAME)),
             DEADLINE, "answers again once the upstream is back")
    assert addresses(bed.ask("staff", "recovered.allowed.test")) == [HTTPS_ADDRS["www.allowed.test"]]


def _check_and_wait(bed, pred, timeout: float, what: str) -> dict:
    """Ask for a check now and wait for a status meeting ``pred``. A new ``last_check`` is
    required only when the old status already met ``pred`` (its times have one-second
    resolution, so two checks within a second look alike)."""
    old = bed.status()
    before, already = old["updates"].get("last_check"), pred(old)
    bed.check_update_now()
    return bed.wait_status(lambda s: (not already or s["updates"].get("last_check") != before) and pred(s),
                           timeout, what)


def _serving(bed) -> int:
    return bed.status()["serving"]["version"]


def test_update_server_down_keeps_last_good_bundle(bed) -> None:
    bed.ensure_running()
    active = _serving(bed)
    bed.close_repo()
    try:
        st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "failed", DEADLINE, "a failed check")
        assert st["updates"]["last_error"], st["updates"]
        assert st["serving"]["version"] == active and bed.rcode("client", "casino.test") == "NXDOMAIN"
        api = bed.api_status()
        if api is not None:
            assert api["updates"]["last_result"] == "failed" and api["updates"]["last_error"]
    finally:
        bed.open_repo()
    st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] in ("up-to-date", "updated"), DEADLINE,
                         "the next check to succeed")
    assert st["updates"]["last_error"] is None


def test_update_server_slow_is_given_up_and_filtering_continues(bed) -> None:
    bed.ensure_running()
    active = _serving(bed)
    nxt = bed.version + 1
    bed.publish(nxt)
    bed.repo_server.fault("/targets/*", Fault("slow", interval=0.05))  # ~20 B/s: past updates.timeout (5 s)
    loop = QueryLoop(bed, "client", ("casino.test", "www.allowed.test"), rate=50).start()
    try:
        t0 = time.monotonic()
        st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "failed", DEADLINE,
                             "the slow update to fail")
        took = time.monotonic() - t0
        assert took >= 4, took  # given up at the run's deadline (updates.timeout 5 s), not before
        assert st["serving"]["version"] == active
        assert st["updates"]["last_error"]
        wait_for(lambda: loop.sent > 50, DEADLINE, "queries during the slow update")
    finally:
        loop.stop()
        bed.repo_server.clear()
    record_metric("update_slow", queries=loop.sent, failed=len(loop.failed))
    assert loop.failed == [] and loop.sent > 50
    st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "updated", DEADLINE, "the update once fast")
    wait_for(lambda: _serving(bed) == nxt, DEADLINE, f"version {nxt} served")


def test_tampered_repository_is_refused(bed) -> None:
    bed.ensure_running()
    active = _serving(bed)
    nxt = bed.version + 1
    bed.publish(nxt)
    target = max((bed.repo / "targets").glob("*.bundle.tar"), key=lambda p: p.stat().st_mtime)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the published archive
    bed.repo_server.replace(f"/targets/{target.name}", bytes(data))
    try:
        st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] in ("failed", "refused"), DEADLINE,
                             "the tampered bundle to be refused")
        assert st["serving"]["version"] == active and st["updates"]["active_version"] == active
        assert st["updates"]["last_error"]
        assert bed.rcode("client", f"v{active}.test") == "NXDOMAIN"
        assert bed.rcode("client", f"v{nxt}.test") == "NOERROR"
    finally:
        bed.repo_server.clear()
    _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "updated", DEADLINE, "the genuine bundle")
    wait_for(lambda: bed.rcode("client", f"v{nxt}.test") == "NXDOMAIN", DEADLINE, f"v{nxt} in force")


def test_expired_repository_is_refused(bed) -> None:
    """Metadata signed two days ago (its timestamp, one day, has expired): a freeze attack
    or a publisher whose cron stopped. The device refuses it and keeps its bundle."""
    bed.ensure_running()
    active = _serving(bed)
    nxt = bed.version + 1
    old = datetime.now(UTC) - timedelta(days=2)
    publish(bed.repo, bed.build_bundle(nxt), Keyring(bed.keys), old)
    st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] in ("failed", "refused"), DEADLINE,
                         "the expired repository to be refused")
    assert "expire" in (st["updates"]["last_error"] or "").lower(), st["updates"]
    assert st["serving"]["version"] == active
    # the publisher re-signs (a fresh publish of the next version): accepted again
    bed.publish(nxt + 1)
    _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "updated", DEADLINE, "the re-signed repository")
    wait_for(lambda: _serving(bed) == nxt + 1, DEADLINE, f"version {nxt + 1} served")


def test_kill_9_of_a_dns_worker(bed) -> None:
    bed.ensure_running()
    if bed.workers < 2:
        pytest.skip("the bed runs one worker")
    loops = [QueryLoop(bed, who, ("casino.test", "www.allowed.test"), rate=100).start() for who in ("client", "staff")]
    try:
        wait_for(lambda: all(lp.answered >= 50 for lp in loops), DEADLINE, "both networks answered")
        first = bed.worker_pids()
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: len(bed.worker_pids()) == 2 and first[0] not in bed.worker_pids(), DEADLINE,
                 "the worker to be restarted")
        restarted = [lp.answered for lp in loops]
        wait_for(lambda: all(lp.answered >= n + 100 for lp, n in zip(loops, restarted)), DEADLINE,
                 "both networks answered after the restart")
    finally:
        for lp in loops:
            lp.stop()
    sent = sum(lp.sent for lp in loops)
    failed = [f for lp in loops for f in lp.failed]
    print(f"kill -9 worker: {sent} queries, {len(failed)} failed: {failed[:5]}")
    record_metric("worker_kill", queries=sent, failed=len(failed))
    # Only what sat in the dead worker's socket buffer (or was being answered) can be lost.
    assert len(failed) <= 4, failed
    assert all(lp.answered >= 0.9 * lp.sent and lp.answered > 50 for lp in loops)
    assert "restarting" in bed.log()
    # and after the restart, every query of both networks is answered again
    assert [bed.rcode(w, "casino.test") for w in ("client", "staff") * 10] == ["NXDOMAIN", "NOERROR"] * 10


def test_kill_9_of_the_whole_appliance_then_restart(bed) -> None:
    bed.ensure_running()
    before = bed.status()
    bed.kill_all()
    st = bed.status()
    assert not st["running"]  # a dead pid in run.json is not "running"
    assert st["bundle"]["version"] == before["serving"]["version"]  # state intact on disk
    bed.start()
    after = bed.status()
    assert after["running"] and after["pid"] == bed.proc.pid
    assert after["serving"]["version"] == before["serving"]["version"]
    assert after["serving"]["path"] == before["serving"]["path"]
    assert bed.rcode("client", "casino.test") == "NXDOMAIN"
    assert bed.rcode("staff", "casino.test") == "NOERROR"


def test_children_do_not_outlive_a_killed_supervisor(bed) -> None:
    """kill -9 of the supervisor alone: its children (DNS workers, web, capture) must go too,
    or a restarted appliance shares the port with orphans that never swap bundles again."""
    bed.ensure_running()
    if bed.workers < 2:
        pytest.skip("the bed runs one worker")
    children = bed.children()
    assert len(bed.worker_pids()) == 2 and set(bed.worker_pids()) <= set(children)
    os.kill(bed.proc.pid, signal.SIGKILL)
    bed.proc.wait(10)
    try:
        wait_for(lambda: not [p for p in children if _alive(p)], DEADLINE, "the supervisor's children to exit")
    except AssertionError:
        raise AssertionError("orphans still running: " + "; ".join(
            f"{p}: {_cmdline(p)}" for p in children if _alive(p))) from None
    finally:
        for pid in [*bed.appliance_pids(), *(p for p in children if _alive(p))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        bed.start()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def test_disk_full_on_the_state_dir(bed) -> None:
    """The state directory (a tmpfs of the bed) fills up: filtering and forwarding go on;
    an update cannot be stored and the active bundle stays; space back, it goes through."""
    bed.ensure_running()
    active = _serving(bed)
    nxt = bed.version + 1
    bed.publish(nxt)
    filler = bed.state / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    try:
        assert os.statvfs(bed.state).f_bavail == 0
        loop = QueryLoop(bed, "client", ("casino.test", "www.allowed.test", "full.allowed.test"), rate=50).start()
        try:
            checks = bed.log().count("update check")
            bed.check_update_now()
            # the updater child runs and fails to store anything; the supervisor logs its end
            wait_for(lambda: bed.log().count("update check") > checks, DEADLINE, "the update check to end")
            assert bed.running()
            assert _serving(bed) == active
            for n in range(5):  # new names are forwarded and answered
                assert addresses(bed.ask("staff", f"new{n}.full.allowed.test")) == [HTTPS_ADDRS["www.allowed.test"]]
            api = bed.api_status()
            if api is not None and api.get("system", {}).get("disk"):
                assert api["system"]["disk"]["free"] < 1 << 20  # the status page shows the full disk
            wait_for(lambda: loop.sent > 100, DEADLINE, "queries while the disk is full")
        finally:
            loop.stop()
        record_metric("disk_full", queries=loop.sent, failed=len(loop.failed))
        assert loop.failed == [] and loop.sent > 100, loop.failed[:5]
    finally:
        filler.unlink()
    _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "updated", DEADLINE, "the update once there is room")
    wait_for(lambda: _serving(bed) == nxt, DEADLINE, f"version {nxt} served")


def test_clock_far_in_the_future(bed) -> None:
    """docs/deployment.md, "No clock, no network": a clock running ahead refuses every update as expired;
    the active bundle keeps filtering."""
    bed.ensure_running()
    active = _serving(bed)
    nxt = bed.version + 1
    bed.publish(nxt)
    bed.stop()
    try:
        bed.start(env=bed.faketime_env("+400d"))  # past the timestamp (1 d), targets (3 mo) and root (1 y)
        st = _check_and_wait(bed, lambda s: s["updates"]["last_result"] in ("failed", "refused"), DEADLINE,
                             "the update to be refused under a clock 400 days ahead")
        assert "expire" in (st["updates"]["last_error"] or "").lower(), st["updates"]
        assert st["serving"]["version"] == active
        assert bed.rcode("client", "casino.test") == "NXDOMAIN"
        assert bed.rcode("client", f"v{active}.test") == "NXDOMAIN"
        assert addresses(bed.ask("staff", "future.allowed.test")) == [HTTPS_ADDRS["www.allowed.test"]]
    finally:
        bed.stop()
        bed.start()
    _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "updated", DEADLINE,
                    "the update once the time is right")


def test_clock_far_in_the_past(bed) -> None:
    """A clock running behind accepts metadata (docs/deployment.md: it cannot tell it has expired), so
    updates still go through; the bundle in force filters throughout."""
    bed.ensure_running()
    nxt = bed.version + 1
    bed.publish(nxt)
    bed.stop()
    try:
        bed.start(env=bed.faketime_env("-200d"))
        assert bed.rcode("client", "casino.test") == "NXDOMAIN"
        _check_and_wait(bed, lambda s: s["updates"]["last_result"] == "updated", DEADLINE,
                        "the update under a clock 200 days behind")
        wait_for(lambda: bed.rcode("client", f"v{nxt}.test") == "NXDOMAIN", DEADLINE, f"v{nxt} in force")
    finally:
        bed.stop()
        bed.start()


def test_query_log_keeps_no_raw_client_address(bed) -> None:
    if not bed.features.get("log"):
        from tests.integration.testbed import feature_skip

        feature_skip("the query log (helper observability: log: section not accepted by the config loader)")
    bed.ensure_running()
    for n in range(5):
        bed.ask("client", "casino.test")
        bed.ask("client", f"q{n}.allowed.test")
    bed.ask("staff", "casino.test")

    def logged() -> list[Path]:
        return [p for p in bed.state.rglob("*") if p.is_file() and "quer" in p.name.lower()
                and "casino.test" in p.read_text(errors="replace")]
    files = wait_for(logged, DEADLINE, "a query log file under the state directory naming casino.test")
    for p in files:
        text = p.read_text(errors="replace")
        assert "10.10.0.2" not in text and "10.20.0.2" not in text, f"raw client address in {p}"
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)  # JSON lines
                except ValueError:
                    raise AssertionError(f"{p}:{n}: not JSON: {line[:200]!r}") from None
