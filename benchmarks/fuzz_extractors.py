"""Random and mutated payloads through every flow extractor (filters/extract_*.py).

    python -m benchmarks.fuzz_extractors [--inputs 1000000] [--seed N] [--max-ms 50]

Seeds: the TCP/UDP payloads of every capture in the shared test data's pcaps/ (real ClientHellos,
QUIC Initials, DNS messages, HTTP requests) plus crafted ones (tests/wire.py). Each input is
a seed mutated (bit flips, byte overwrites with 0x00/0xff/length-like values, truncation,
insertion, duplication of a slice, splicing two seeds) or random bytes; it goes through
every extractor's entry points: the DNS message parser and TCP session, the TLS ClientHello
reassembler (whole and split into random segments) and parser, the QUIC Initial session,
the HTTP session. The contract (filters/extraction.py): extractors never raise on bad input
— anything but the PacketError family is a failure — and each input finishes within
``--max-ms``. Prints a table; exit 1 on any failure (the input is saved for a regression test).
The unit test tests/unit/test_extractors_fuzz.py runs a short campaign of the same code.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks._common import SHARED_DATA
from filters import extract_dns, extract_http, extract_quic, extract_tls
from filters.errors import PacketError

PCAPS = SHARED_DATA / "pcaps"
MAX_SEEDS = 4000  # distinct payloads kept as seeds (the captures hold ~10k, many alike)


def seeds(pcaps: Path = PCAPS, limit: int = MAX_SEEDS) -> list[bytes]:
    """Distinct non-empty TCP/UDP payloads of the shared captures, plus crafted ones."""
    from appliance.pcap.reader import CaptureFile
    from filters.errors import CaptureFileError
    from filters.packet import Drop, decode

    out: dict[bytes, None] = {}
    files = sorted(p for p in pcaps.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap")) if pcaps.is_dir() else []
    for f in files:
        try:
            with CaptureFile(str(f)) as cap:
                for _ts, lt, frame in cap.frames():
                    pkt = decode(bytes(frame), lt)
                    if not isinstance(pkt, Drop) and pkt.payload:
                        out[bytes(pkt.payload[:4096])] = None
                        if len(out) >= limit:
                            return list(out)
        except (CaptureFileError, OSError):
            continue
    try:
        import os

        from tests.wire import client_hello, crypto_frame, quic_initial, records

        out[records(client_hello(b"a.example", pad_to=1500))] = None
        out[quic_initial(os.urandom(8), crypto_frame(0, client_hello(b"q.example")))] = None
        out[b"GET / HTTP/1.1\r\nHost: h.example\r\n\r\n"] = None
    except ImportError:  # run outside the repository's test tree
        pass
    return list(out)


_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x16, 0x03, 0xC0, 0x40)


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if not b:
            b = bytearray(rng.randbytes(rng.randint(1, 64)))
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice(_INTERESTING)
        elif op == 2:  # a lying 16-bit length
            b[i:i + 2] = rng.choice((0, 1, 0xFFFF, len(b), len(b) + 1)).to_bytes(2, "big")
        elif op == 3:
            del b[rng.randrange(len(b)):]
        elif op == 4:
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == 5:
            j = rng.randrange(len(b))
            b[i:i] = b[min(i, j):max(i, j)][:256]
        else:
            other = rng.choice(pool)
            b = b[:i] + other[rng.randrange(len(other) + 1):]
    return bytes(b[:20000])


def inputs(n: int, seed: int, pool: list[bytes]) -> Iterator[bytes]:
    rng = random.Random(seed)
    for k in range(n):
        if not pool or k % 10 == 9:
            yield rng.randbytes(rng.choice((0, 1, 5, 40, 300, 1200, 3000)))
        else:
            yield mutate(rng, rng.choice(pool), pool)


def _split_feed(session, data: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(data):
        step = rng.randint(1, max(1, len(data) // 3))
        if session.feed(data[pos:pos + step]).finished:
            return
        pos += step


def run_one(data: bytes, rng: random.Random) -> None:
    """Every extractor entry point on ``data``; raises only on a contract violation."""
    extract_dns.message_names(data)
    extract_dns.DnsTcpSession().feed(data)
    extract_tls.looks_like_tls(data)
    extract_tls.ClientHelloReassembler().feed(data)
    _split_feed(extract_tls.ClientHelloReassembler(), data, rng)
    extract_tls.parse_client_hello(data[4:])
    extract_tls.client_hello_from_handshake(data)
    extract_quic.looks_like_initial(data)
    q = extract_quic.QuicInitialSession()
    q.feed(data)
    q.feed(data[::-1])
    extract_http.looks_like_http(data)
    _split_feed(extract_http.HttpSession(), data, rng)


def campaign(n: int, seed: int = 1, pool: list[bytes] | None = None, max_ms: float | None = None,
             on_fail: Callable[[bytes, BaseException | str], None] | None = None) -> dict:
    """Run ``n`` inputs; returns counts. Failures (an exception outside PacketError, or an
    input slower than ``max_ms``) go to ``on_fail`` (default: raise)."""
    pool = seeds() if pool is None else pool
    rng = random.Random(seed ^ 0x5EED)
    stats = {"inputs": 0, "packet_errors": 0, "slow": 0, "failures": 0, "max_ms": 0.0}
    for data in inputs(n, seed, pool):
        t0 = time.perf_counter()
        try:
            run_one(data, rng)
        except PacketError:
            stats["packet_errors"] += 1
        except Exception as exc:  # the contract says this cannot happen
            stats["failures"] += 1
            if on_fail is None:
                raise AssertionError(f"extractor raised {exc!r} on {data[:200].hex()}") from exc
            on_fail(data, exc)
        ms = (time.perf_counter() - t0) * 1000
        stats["max_ms"] = max(stats["max_ms"], ms)
        if max_ms is not None and ms > max_ms:
            # Timed again: on a shared machine one run can lose the CPU for a while; an input
            # that is really slow is slow every time.
            for _ in range(3):
                t1 = time.perf_counter()
                run_one(data, random.Random(0))
                ms = min(ms, (time.perf_counter() - t1) * 1000)
        if max_ms is not None and ms > max_ms:
            stats["slow"] += 1
            if on_fail is not None:
                on_fail(data, f"took {ms:.1f} ms")
        stats["inputs"] += 1
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    pool = seeds()
    failures: list[tuple[bytes, object]] = []
    t0 = time.perf_counter()
    st = campaign(args.inputs, args.seed, pool, args.max_ms, lambda d, why: failures.append((d, why)))
    secs = time.perf_counter() - t0
    print(f"seeds {len(pool):,}  inputs {st['inputs']:,}  in {secs:.1f} s ({st['inputs'] / secs:,.0f}/s)  "
          f"failures {st['failures']}  slower than {args.max_ms} ms: {st['slow']}  slowest {st['max_ms']:.2f} ms")
    for i, (data, why) in enumerate(failures[:20]):
        path = Path(f"fuzz-failure-{i}.bin")
        path.write_bytes(data)
        print(f"  {path}: {why!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
