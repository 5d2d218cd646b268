"""filters.dns_wire: header, question and OPT parsing; every bad packet a PacketError."""

from __future__ import annotations

import random

import pytest

from filters.dns_wire import MIN_UDP_PAYLOAD, parse_query, qname_end
from filters.errors import PacketError, RuntPacketError
from tests.dnsdata import fuzz_seeds, malformed, mutations, query


def test_plain_query() -> None:
    buf = query("WwW.Example.org", 28, qid=7)
    q = parse_query(buf)
    assert (q.id, q.qtype, q.qclass, q.edns, q.fast) == (7, 28, 1, False, True)
    assert q.qname_end == 12 + len(b"\x03www\x07example\x03org\x00")
    assert q.question_end == len(buf) and q.udp_size == MIN_UDP_PAYLOAD


def test_edns_fields_and_given_name_end() -> None:
    buf = query("example.org", edns=True, do=True, udp=4096, version=1)
    q = parse_query(buf, name_end=qname_end(buf))
    assert (q.edns, q.do, q.udp_size, q.edns_version) == (True, True, 4096, 1)
    small = parse_query(query("example.org", edns=True, udp=100))
    assert small.udp_size == MIN_UDP_PAYLOAD  # RFC 6891 §6.2.5


def test_slow_cases_are_parsed_but_not_fast() -> None:
    assert not parse_query(query("example.org", qclass=3)).fast  # CHAOS
    two = bytearray(query("example.org"))
    two[5] = 2
    q = parse_query(bytes(two))
    assert q.qdcount == 2 and q.qname_end == -1 and not q.fast
    notify = bytearray(query("example.org"))
    notify[2] |= 4 << 3
    assert parse_query(bytes(notify)).opcode == 4 and not parse_query(bytes(notify)).fast


@pytest.mark.parametrize("label", sorted(malformed()))
def test_malformed_packets(label: str) -> None:
    buf = malformed()[label]
    with pytest.raises(PacketError) as info:
        parse_query(buf)
    assert isinstance(info.value, RuntPacketError) == (len(buf) < 12)


def test_responses_are_dropped() -> None:
    buf = bytearray(query("example.org"))
    buf[2] |= 0x80
    with pytest.raises(RuntPacketError):
        parse_query(bytes(buf))


def test_fuzz_seeds_raise_only_packet_errors() -> None:
    seeds = fuzz_seeds()
    if not seeds:
        pytest.skip("no DNS fuzz seeds (dns-fuzz/ of the shared test data): set SCHOOLGATE_SHARED_DATA to a "
                    "copy of the public lists and pcaps")
    rng = random.Random(4)
    n = 0
    for seed in seeds + list(malformed().values()):
        for buf in [seed, *mutations(seed, rng, 60)]:
            n += 1
            try:
                parse_query(buf)
            except PacketError:
                pass
    assert n > 1000
