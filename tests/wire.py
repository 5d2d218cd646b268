"""Crafted traffic for the extractor and inspector tests: TLS ClientHellos, QUIC Initials
(protected with the RFC 9001 §5 keys), frames, and pcap/pcapng files. Tests only."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from filters.extract_quic import VERSION_1, VERSION_2, initial_keys

GREASE_EXT = 0x0A0A
# Fixed addresses: scapy would otherwise look the destination MAC up (and warn).
_ETHER = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack(">HH", etype, len(body)) + body


def sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack(">H", len(name)) + name
    return ext(0, struct.pack(">H", len(entry)) + entry)


def alpn_ext(*protos: bytes) -> bytes:
    body = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack(">H", len(body)) + body)


def client_hello(sni: bytes | None = b"example.com", *, alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
                 extra: Iterable[bytes] = (), pad_to: int = 0, grease: bool = True) -> bytes:
    """A ClientHello handshake message (4-byte header included)."""
    exts = []
    if grease:
        exts.append(ext(GREASE_EXT, b""))
    if sni is not None:
        exts.append(sni_ext(sni))
    if alpn:
        exts.append(alpn_ext(*alpn))
    exts.extend(extra)
    exts.append(ext(43, b"\x04\x03\x04\x03\x03"))  # supported_versions: TLS 1.3, 1.2
    ext_bytes = b"".join(exts)
    if pad_to and len(ext_bytes) < pad_to:  # RFC 7685 padding, like a post-quantum key share
        ext_bytes += ext(21, bytes(pad_to - len(ext_bytes) - 4))
    body = (b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + b"\x00\x04\x13\x01\x13\x02"
            + b"\x01\x00" + struct.pack(">H", len(ext_bytes)) + ext_bytes)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(hs: bytes, size: int = 1 << 14) -> bytes:
    """Wrap handshake bytes in TLS records of at most ``size`` octets each."""
    out = b""
    for i in range(0, len(hs), size):
        chunk = hs[i:i + size]
        out += b"\x16\x03\x01" + struct.pack(">H", len(chunk)) + chunk
    return out


def varint(v: int) -> bytes:
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return struct.pack(">H", 0x4000 | v)
    return struct.pack(">I", 0x80000000 | v)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def quic_initial(dcid: bytes, frames: bytes, *, version: int = VERSION_1, pn: int = 0,
                 scid: bytes = b"", token: bytes = b"", size: int = 1200) -> bytes:
    """A client Initial packet carrying ``frames``, PADDING-filled to ``size`` octets and
    protected as RFC 9001 §5 (9369 for v2) says."""
    ptype = 0b01 if version == VERSION_2 else 0b00
    pn_len = 4
    first = 0xC0 | (ptype << 4) | (pn_len - 1)
    fixed = (bytes([first]) + struct.pack(">I", version) + bytes([len(dcid)]) + dcid
             + bytes([len(scid)]) + scid + varint(len(token)) + token)
    payload_len = max(len(frames), size - len(fixed) - 2 - pn_len - 16)
    payload = frames + bytes(payload_len - len(frames))
    header = fixed + struct.pack(">H", 0x4000 | (pn_len + payload_len + 16)) + pn.to_bytes(pn_len, "big")
    key, iv, hp = initial_keys(version, dcid)
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, payload, header)
    sample = ct[4 - pn_len:4 - pn_len + 16]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    h = bytearray(header)
    h[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        h[len(fixed) + 2 + i] ^= mask[1 + i]
    return bytes(h) + ct


def tcp_frame(payload: bytes, *, src: str = "10.0.0.2", dst: str = "10.0.0.1", sport: int = 40000,
              dport: int = 443, seq: int = 1000, flags: str = "PA") -> bytes:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(_ETHER / ip / TCP(sport=sport, dport=dport, seq=seq, flags=flags) / payload)


def udp_frame(payload: bytes, *, src: str = "10.0.0.2", dst: str = "10.0.0.1", sport: int = 40000,
              dport: int = 443) -> bytes:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(_ETHER / ip / UDP(sport=sport, dport=dport) / payload)


def write_pcap(path: Path, frames: Iterable[bytes], linktype: int = 1, *, big: bool = False,
               nano: bool = False, t0: float = 1700000000.0) -> Path:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
        for i, fr in enumerate(frames):
            sec = int(t0) + i
            f.write(struct.pack(e + "IIII", sec, 500 if not nano else 500000, len(fr), len(fr)) + fr)
    return path


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def write_pcapng(path: Path, frames: Iterable[tuple[int, bytes]], linktypes: Iterable[int] = (1,),
                 *, big: bool = False, tsresol: int | None = None, simple: bool = False,
                 t0: float = 1700000000.0) -> Path:
    """``frames`` are (interface index, frame); one IDB per link type."""
    e = ">" if big else "<"
    out = _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt in linktypes:
        opts = b""
        if tsresol is not None:
            opts = struct.pack(e + "HH", 9, 1) + bytes([tsresol, 0, 0, 0]) + struct.pack(e + "HH", 0, 0)
        out += _block(e, 1, struct.pack(e + "HHI", lt, 0, 262144) + opts)
    unit = 10 ** -(tsresol if tsresol is not None else 6)
    for i, (iface, fr) in enumerate(frames):
        if simple:
            out += _block(e, 3, struct.pack(e + "I", len(fr)) + fr)
            continue
        ticks = int(round((t0 + i) / unit))
        out += _block(e, 6, struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(fr), len(fr)) + fr)
    path.write_bytes(out)
    return path
