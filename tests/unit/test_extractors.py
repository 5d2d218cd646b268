"""filters.extractors: the table picks an extractor by port, then by the first payload."""

from __future__ import annotations

from filters.extractors import EXTRACTORS, is_dot, select
from filters.packet import TCP, UDP
from tests.dnsdata import query
from tests.wire import client_hello, crypto_frame, quic_initial, records


def test_every_extractor_module_has_one_row_and_a_test_file() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    modules = {p.stem for p in (root / "filters").glob("extract_*.py")}
    assert {f"extract_{s.proto}" for s in EXTRACTORS} == modules
    for m in modules:
        assert (root / "tests" / "unit" / f"test_{m}.py").is_file(), m


def test_selection() -> None:
    hello = records(client_hello())
    assert select(UDP, 40000, 53, query("a.example")).proto == "dns"
    assert select(TCP, 53, 40000, b"\x00\x10").proto == "dns"  # a DNS port wins
    assert select(TCP, 40000, 8443, hello).proto == "tls"  # TLS on any port
    assert select(TCP, 40000, 8080, b"GET / HTTP/1.1\r\n").proto == "http"
    assert select(UDP, 40000, 4433, quic_initial(b"12345678", crypto_frame(0, b""))).proto == "quic"
    assert select(TCP, 40000, 22, b"SSH-2.0-OpenSSH_9.2\r\n") is None
    assert select(UDP, 40000, 123, b"\x23" + bytes(47)) is None


def test_dot() -> None:
    assert is_dot(40000, 853, ()) and is_dot(853, 40000, ())
    assert is_dot(40000, 443, (b"dot",)) and not is_dot(40000, 443, (b"h2",))
