"""Start-up with an empty numba cache (the first start after an install): the service answers
through the plain loop while a forked child compiles the fast path's kernels, says so, then
switches to the fast path; "ready" is logged once the service has answered its own query.

Cold compiles take tens of seconds of CPU (far more on a loaded machine), so the waits here
poll log lines up to a deadline well past DEADLINE; nothing asserts how long it took.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from tests.dnsservers import free_port, start_schoolgate  # noqa: E402
from tests.wait import DEADLINE, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

COLD_COMPILE_DEADLINE = 6 * DEADLINE  # a whole compile on a machine with both cores busy


def messages(sg) -> list[str]:
    return [str(r.get("msg")) for r in sg.records()]


def test_cold_cache_answers_at_once_and_compiles_the_fast_path_in_the_background(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "schoolgate.yaml"
    config.write_text(f"""\
state_dir: state
dns: {{listen: ["127.0.0.1:{port}"], upstreams: []}}
policies:
  default: {{block: [gambling]}}
""")
    sg = start_schoolgate(config, tmp_path, port, env={"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")})
    try:
        # start_schoolgate returned on a first answer; "ready" follows the service's own
        wait_for(lambda: "ready" in messages(sg), DEADLINE, "ready")
        ready = sg.records("ready")
        assert len(ready) == 1 and isinstance(ready[0]["first_answer_s"], float)
        r = dns.query.udp(dns.message.make_query("www.0-casino.info", "A"), "127.0.0.1", port=port, timeout=5.0)
        assert dns.rcode.to_text(r.rcode()) == "NXDOMAIN"  # the demo bundle blocks it, plain loop or not
        wait_for(lambda: any(m.startswith("DNS fast path on: its kernels compiled in") for m in messages(sg)),
                 COLD_COMPILE_DEADLINE, "the fast path to come on")
        msgs = messages(sg)
        assert msgs.index("ready") < next(i for i, m in enumerate(msgs) if m.startswith("DNS fast path on"))
        assert any(m.startswith("compiling the DNS fast path's kernels") for m in msgs)  # the progress line
        assert any((tmp_path / "numba-cache").rglob("*.nbi"))
        for _ in range(5):
            r = dns.query.udp(dns.message.make_query("www.0-casino.info", "A"), "127.0.0.1", port=port, timeout=5.0)
            assert dns.rcode.to_text(r.rcode()) == "NXDOMAIN"
    finally:
        code = sg.stop()
    assert code == 0, sg.text()[-3000:]
    fast = sg.records("fast path")
    assert fast and fast[0]["fast_path"]["datagrams"] >= 5  # answered by the kernel once it was on

    # A warm start loads the kernels from the cache: no compile, no progress line.
    sg = start_schoolgate(config, tmp_path, port, name="warm", env={"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")})
    try:
        wait_for(lambda: sg.p.poll() is None and "ready" in messages(sg), DEADLINE, "ready")
        sg.p.send_signal(signal.SIGUSR1)  # counters: proves the loop runs (and is logged)
        wait_for(lambda: "counters" in messages(sg), DEADLINE, "the counters log line")
        assert not any(m.startswith("compiling the DNS fast path") for m in messages(sg))
    finally:
        code = sg.stop()
    assert code == 0, sg.text()[-3000:]
