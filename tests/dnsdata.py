"""DNS packets for tests: queries built by hand and by dnslib, and the shared fuzz seeds."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from filters.names import name_to_wire
from tests.conftest import SHARED_DATA

FUZZ_DIR = SHARED_DATA / "dns-fuzz"


def query(name: str, qtype: int = 1, qid: int = 0x1234, *, rd: bool = True, edns: bool = False,
          do: bool = False, udp: int = 1232, qclass: int = 1, version: int = 0) -> bytes:
    """A one-question query as a stub resolver sends it."""
    flags = 0x0100 if rd else 0
    ar = 1 if edns else 0
    out = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, ar) + name_to_wire(name) + struct.pack(">HH", qtype, qclass)
    if edns:
        out += b"\x00\x00\x29" + struct.pack(">HBBHH", udp, 0, version, 0x8000 if do else 0, 0)
    return out


def malformed() -> dict[str, bytes]:
    """Hostile packets a DNS service must survive, each with a header (so FORMERR or drop)."""
    hdr = struct.pack(">HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    return {
        "short header": b"\xbe\xef\x01\x00\x00",
        "zero length": b"",
        "header only, qdcount 1": hdr,
        "compression loop": hdr + b"\xc0\x0c" + b"\x00\x01\x00\x01",
        "pointer past end": hdr + b"\xc0\xff" + b"\x00\x01\x00\x01",
        "300-byte name": hdr + b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01",
        "label past end": hdr + b"\x3fabc",
        "bad counts (arcount 2, no records)": struct.pack(">HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 2)
        + name_to_wire("example.org") + b"\x00\x01\x00\x01",
        "trailing garbage": hdr + name_to_wire("example.org") + b"\x00\x01\x00\x01garbage",
        "two OPT records": struct.pack(">HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 2) + name_to_wire("example.org")
        + b"\x00\x01\x00\x01" + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
    }


def fuzz_seeds() -> list[bytes]:
    """Every seed file under SHARED_DATA/dns-fuzz (empty when absent)."""
    if not FUZZ_DIR.is_dir():
        return []
    return [p.read_bytes() for p in sorted(FUZZ_DIR.rglob("*"))
            if p.is_file() and not p.name.upper().startswith(("LICENSE", "SNAPSHOT", "README"))]


def mutations(seed: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    """The seed as a query (QR cleared), truncations and byte flips, bounded by ``count``."""
    if len(seed) > 2:
        yield seed[:2] + bytes((seed[2] & 0x7F,)) + seed[3:]
    for i in range(min(len(seed), count // 2)):
        yield seed[:i]
    for _ in range(count - min(len(seed), count // 2)):
        b = bytearray(seed)
        if not b:
            return
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice((0, 0xC0, 0x3F, 0xFF, rng.randrange(256)))
        yield bytes(b)


def hostile_packets(rng: random.Random, total: int, extra_seeds: list[bytes] = ()) -> list[bytes]:
    """``total`` packets for fuzzing a DNS server: the shared seeds, the malformed set and
    ``extra_seeds``, their mutations, random bytes, and headers whose counts lie."""
    seeds = fuzz_seeds() + list(malformed().values()) + list(extra_seeds) + [query("example.org", edns=True)]
    out: list[bytes] = []
    while len(out) < total:
        seed = rng.choice(seeds)
        kind = rng.random()
        if kind < 0.6:
            out.extend(mutations(seed, rng, 8))
        elif kind < 0.8:
            out.append(rng.randbytes(rng.randrange(0, 80)))
        else:
            b = bytearray(seed[:60])
            if len(b) >= 12:
                b[4:12] = struct.pack(">HHHH", *(rng.choice((0, 1, 2, 255, 65535)) for _ in range(4)))
            out.append(bytes(b) + rng.randbytes(rng.randrange(0, 30)))
    return out[:total]
