"""filters.extract_quic: Initial keys, header protection, AES-GCM, CRYPTO reassembly.

The test vectors are RFC 9001 Appendix A (QUIC v1) and RFC 9369 Appendix A (QUIC v2): the
client's keys for DCID 0x8394c8f03e515708, and its first Initial. The protected packet is
rebuilt here from the RFC's unprotected header and payload and must match the RFC's first
and last octets (the AEAD tag covers every octet in between), then decrypt to its hello.
"""

from __future__ import annotations

import random

import pytest

from filters.extract_quic import (
    MAX_INITIALS,
    VERSION_1,
    VERSION_2,
    QuicInitialSession,
    crypto_frames,
    decrypt_initial,
    hkdf_expand_label,
    initial_keys,
    looks_like_initial,
)
from filters.extraction import Status
from tests.wire import client_hello, crypto_frame, quic_initial

DCID = bytes.fromhex("8394c8f03e515708")
# RFC 9001 §A.2: the CRYPTO frame with the client's ClientHello (SNI example.com, ALPN "alpn"),
# padded with PADDING frames to 1162 octets.
RFC_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff").ljust(1162, b"\x00")
VECTORS = {
    # version: (key, iv, hp, unprotected header, protected packet's first 32 and last 16 octets)
    VERSION_1: ("1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2",
                "c300000001088394c8f03e5157080000449e00000002",
                "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11",
                "e221af44860018ab0856972e194cd934"),
    VERSION_2: ("8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9",
                "d36b3343cf088394c8f03e5157080000449e00000002",
                "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485",
                "a18b2faa745b6fe189cf772a9f84cbfc"),
}


def rfc_packet(version: int) -> bytes:
    """Protect the RFC's payload under the RFC's header (packet number 2, 4 octets)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv, hp = initial_keys(version, DCID)
    header = bytes.fromhex(VECTORS[version][3])
    nonce = (int.from_bytes(iv, "big") ^ 2).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, RFC_PAYLOAD, header)
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(ct[:16]) + enc.finalize()
    h = bytearray(header)
    h[0] ^= mask[0] & 0x0F
    for i in range(4):
        h[18 + i] ^= mask[1 + i]
    return bytes(h) + ct


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_rfc_keys_and_client_initial(version: int) -> None:
    key, iv, hp, _, first, last = VECTORS[version]
    assert [x.hex() for x in initial_keys(version, DCID)] == [key, iv, hp]
    pkt = rfc_packet(version)
    assert len(pkt) == 1200 and pkt[:32].hex() == first and pkt[-16:].hex() == last
    plain, nxt, why = decrypt_initial(pkt)
    assert plain == RFC_PAYLOAD and nxt == -1 and why == ""
    res = QuicInitialSession().feed(pkt)
    assert res.status == Status.DONE and res.names == (b"example.com",) and res.alpn == (b"alpn",)


def test_hkdf_expand_label_rfc9001() -> None:
    # RFC 9001 §A.1: client_initial_secret from the initial secret.
    initial = bytes.fromhex("7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44")
    assert hkdf_expand_label(initial, b"client in", 32).hex() == (
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea")


def test_crypto_split_across_frames_and_packets_out_of_order() -> None:
    # quic-go splits the SNI on purpose; Chrome shuffles CRYPTO frames with PINGs between.
    hello = client_hello(b"split.quic.example", pad_to=1500)
    parts = [(o, hello[o:o + 300]) for o in range(0, len(hello), 300)]
    rng = random.Random(1)
    rng.shuffle(parts)
    dcid = bytes(range(8))
    pkts = []
    for i in range(0, len(parts), 3):
        frames = b"".join(b"\x01" + crypto_frame(o, d) for o, d in parts[i:i + 3])
        pkts.append(quic_initial(dcid, frames, pn=len(pkts)))
    s = QuicInitialSession()
    out = [s.feed(p) for p in pkts]
    assert [o.status for o in out[:-1]] == [Status.MORE] * (len(pkts) - 1)
    assert out[-1].names == (b"split.quic.example",)
    assert s.feed(pkts[0]).status == Status.NONE  # read once


def test_overlapping_retransmitted_crypto_data() -> None:
    hello = client_hello(b"dup.example")
    frames = crypto_frame(0, hello[:100]) + crypto_frame(50, hello[50:150]) + crypto_frame(100, hello[100:])
    res = QuicInitialSession().feed(quic_initial(b"\x01\x02\x03\x04", frames, version=VERSION_2))
    assert res.names == (b"dup.example",)


def test_coalesced_and_server_packets() -> None:
    dcid = b"\xaa" * 8
    hello = client_hello(b"coalesced.example")
    first = quic_initial(dcid, crypto_frame(0, hello[:80]), size=300)
    second = quic_initial(dcid, crypto_frame(80, hello[80:]), pn=1, size=900)
    assert QuicInitialSession().feed(first + second).names == (b"coalesced.example",)
    # Keyed for a different DCID than the header carries: does not authenticate (as a
    # server's Initial under the client's keys); not QUIC at all: NONE.
    forged = bytearray(quic_initial(dcid, crypto_frame(0, hello)))
    forged[6:14] = b"\xbb" * 8
    res = QuicInitialSession().feed(bytes(forged))
    assert res.status == Status.NONE and "authenticate" in res.reason
    assert QuicInitialSession().feed(b"\x40" + bytes(40)).status == Status.NONE


def test_versions_and_packet_types() -> None:
    pkt = quic_initial(DCID, crypto_frame(0, client_hello()))
    assert looks_like_initial(pkt)
    other = pkt[:1] + b"\x1a\x2a\x3a\x4a" + pkt[5:]  # a reserved version (RFC 9000 §15)
    assert not looks_like_initial(other)
    assert decrypt_initial(other)[2].startswith("QUIC version")
    vn = b"\x80\x00\x00\x00\x00" + pkt[5:40]
    assert decrypt_initial(vn)[2] == "version negotiation"


def test_give_up_after_max_initials() -> None:
    s = QuicInitialSession()
    pkts = [quic_initial(DCID, b"\x01", pn=i) for i in range(MAX_INITIALS)]
    out = [s.feed(p) for p in pkts]
    assert out[-1].status == Status.ERROR


def test_frames_parser_limits() -> None:
    assert crypto_frames(b"\x06\x00\x05ab")[1] == "CRYPTO frame truncated"
    assert crypto_frames(b"\x02\x00\x00\x3f")[1] == "ACK frame truncated"
    assert "not allowed" in crypto_frames(b"\x08\x00")[1]
    frames, why = crypto_frames(b"\x03\x01\x00\x00\x00\x01\x02\x03" + b"\x1c\x00\x00\x02ok" + b"\x06\x00\x01z")
    assert why == "" and frames == [(0, b"z")]


def test_mutations_never_raise() -> None:
    rng = random.Random(9)
    base = quic_initial(DCID, crypto_frame(0, client_hello(b"m.example")))
    for _ in range(1500):
        b = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(len(b), 64))] = rng.randrange(256)
        res = QuicInitialSession().feed(bytes(b[:rng.randint(0, len(b))]))
        assert res.status in tuple(Status)
