"""QUIC Initial packets: decrypt them and read the ClientHello inside (sans-IO).

A QUIC client's first flight is encrypted, but with keys anyone can derive from the
packet's Destination Connection ID (RFC 9001 §5.2), so middleboxes can read the SNI:

1. initial_secret = HKDF-Extract(version salt, DCID); client_initial_secret =
   HKDF-Expand-Label(initial_secret, "client in", "", 32); from it the AEAD key, IV and
   header-protection key (labels "quic key"/"quic iv"/"quic hp"; QUIC v2 uses
   "quicv2 key"/"quicv2 iv"/"quicv2 hp" and its own salt, RFC 9369 §3.3.1-3.3.2).
2. Header protection (RFC 9001 §5.4): a 16-octet sample of the ciphertext, encrypted with
   AES-ECB under the hp key, masks the low 4 bits of the first byte and the packet number.
3. The payload is AES-128-GCM (RFC 9001 §5.3) with nonce = IV xor packet number and the
   header as associated data.
4. The frames (RFC 9000 §19) hold CRYPTO data at offsets; clients split the ClientHello
   over several CRYPTO frames and packets, in any order (Chrome's "chaos protection",
   quic-go splitting the SNI on purpose), so :class:`QuicInitialSession` reassembles the
   CRYPTO stream across frames and datagrams of a flow, then extract_tls parses the hello.

Packets that do not authenticate under the client keys (the server's Initials, other
versions, garbage) are reported, never raised. Coalesced packets (RFC 9000 §12.2) in one
datagram are each examined.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filters.extract_tls import MAX_CLIENT_HELLO, client_hello_from_handshake
from filters.extraction import MORE, Extraction, Status

__all__ = [
    "VERSION_1", "VERSION_2", "SUPPORTED_VERSIONS", "MAX_CID_LEN", "MAX_CRYPTO_STREAM",
    "MAX_INITIALS", "looks_like_initial", "initial_keys", "hkdf_expand_label",
    "decrypt_initial", "crypto_frames", "QuicInitialSession",
]

VERSION_1 = 0x00000001  # RFC 9000
VERSION_2 = 0x6B3343CF  # RFC 9369
# RFC 9001 §5.2 (v1), RFC 9369 §3.3.1 (v2); drafts 29-32 used the draft-29 salt and the
# v1 labels (draft-ietf-quic-tls-29 §5.2) and were deployed widely enough to be worth it.
_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_V1_LABELS = (b"quic key", b"quic iv", b"quic hp")
_V2_LABELS = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")
_VERSIONS: dict[int, tuple[bytes, tuple[bytes, bytes, bytes], int]] = {
    # version: (salt, labels, long-header type bits of an Initial)
    VERSION_1: (_SALT_V1, _V1_LABELS, 0b00),
    VERSION_2: (_SALT_V2, _V2_LABELS, 0b01),  # RFC 9369 §3.2: Initial is 0b01
    **{0xFF000000 + d: (_SALT_DRAFT29, _V1_LABELS, 0b00) for d in range(29, 33)},
}
SUPPORTED_VERSIONS = frozenset(_VERSIONS)

# RFC 9000 §17.2: v1 connection IDs are at most 20 octets; a longer one is not v1 (or v2).
MAX_CID_LEN = 20
# CRYPTO stream octets reassembled: the ClientHello (extract_tls's cap) and its header.
MAX_CRYPTO_STREAM = MAX_CLIENT_HELLO + 4
# Initial packets examined per flow before giving up: a ClientHello spans 1-3 packets
# (5 with a post-quantum key share and small datagrams); retransmissions add a few.
MAX_INITIALS = 16
# Derived keys are cached per (version, DCID): a client's Initials share one DCID.
_KEY_CACHE = 1024
# RFC 9001 §5.4.2: the header-protection sample is 16 octets taken 4 octets after the
# start of the packet number field.
_SAMPLE_LEN = 16
_AEAD_TAG = 16


def hkdf_expand_label(secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1), as QUIC uses it."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    out = b""
    block = b""
    i = 1
    while len(out) < length:  # RFC 5869 §2.3 HKDF-Expand
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


@lru_cache(maxsize=_KEY_CACHE)
def initial_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting the client's Initial packets for this version and DCID.
    Raises KeyError for a version without known initial keys (callers check first)."""
    salt, (lkey, liv, lhp), _ = _VERSIONS[version]
    initial_secret = hmac.new(salt, dcid, hashlib.sha256).digest()  # HKDF-Extract
    client = hkdf_expand_label(initial_secret, b"client in", 32)
    return hkdf_expand_label(client, lkey, 16), hkdf_expand_label(client, liv, 12), hkdf_expand_label(client, lhp, 16)


@lru_cache(maxsize=_KEY_CACHE)
def _ciphers(version: int, dcid: bytes) -> tuple[AESGCM, bytes, Cipher]:
    key, iv, hp = initial_keys(version, dcid)
    return AESGCM(key), iv, Cipher(algorithms.AES(hp), modes.ECB())


def _varint(b: bytes, p: int) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at ``b[p]``: (value, next offset); (-1, p)
    when it runs past the end."""
    if p >= len(b):
        return -1, p
    first = b[p]
    size = 1 << (first >> 6)
    if p + size > len(b):
        return -1, p
    v = first & 0x3F
    for i in range(1, size):
        v = (v << 8) | b[p + i]
    return v, p + size


def looks_like_initial(datagram: bytes) -> bool:
    """A long-header packet of a version we decrypt, of the Initial type."""
    if len(datagram) < 7 or datagram[0] & 0xC0 != 0xC0:
        return False
    version = int.from_bytes(datagram[1:5], "big")
    spec = _VERSIONS.get(version)
    return spec is not None and (datagram[0] >> 4) & 0x03 == spec[2]


def decrypt_initial(datagram: bytes, start: int = 0) -> tuple[bytes | None, int, str]:
    """Decrypt the client Initial packet at ``datagram[start]``.

    Returns (plaintext frames or None, offset of the next coalesced packet or -1, reason
    when None). Never raises."""
    d = datagram
    n = len(d)
    if start + 7 > n:
        return None, -1, "long header truncated"
    first = d[start]
    if first & 0x80 == 0:
        return None, -1, "short header packet"  # 1-RTT: nothing readable
    version = int.from_bytes(d[start + 1:start + 5], "big")
    spec = _VERSIONS.get(version)
    if spec is None:
        return None, -1, "version negotiation" if version == 0 else f"QUIC version 0x{version:08x} not decrypted"
    p = start + 5
    dcil = d[p]
    if dcil > MAX_CID_LEN or p + 1 + dcil >= n:
        return None, -1, "bad destination connection ID length"
    dcid = d[p + 1:p + 1 + dcil]
    p += 1 + dcil
    scil = d[p]
    if scil > MAX_CID_LEN or p + 1 + scil > n:
        return None, -1, "bad source connection ID length"
    p += 1 + scil
    ptype = (first >> 4) & 0x03
    if ptype != spec[2]:
        if version == VERSION_2:  # RFC 9369 §3.2 type bits: Retry 0b00, 0-RTT 0b10, Handshake 0b11
            retry = ptype == 0b00
        else:
            retry = ptype == 0b11
        if retry:  # a Retry has no Length field and is never coalesced (RFC 9000 §17.2.5)
            return None, -1, "Retry packet"
        length, q = _varint(d, p)  # 0-RTT or Handshake: skip it, a later packet may be Initial
        if length < 0 or q + length > n:
            return None, -1, "coalesced packet length runs past the datagram"
        return None, q + length, "not an Initial packet"
    token_len, p = _varint(d, p)
    if token_len < 0 or p + token_len > n:
        return None, -1, "token length runs past the datagram"
    p += token_len
    length, p = _varint(d, p)
    if length < 0:
        return None, -1, "length field truncated"
    end = p + length
    if end > n:
        return None, -1, "packet length runs past the datagram"
    pn_offset = p
    if pn_offset + 4 + _SAMPLE_LEN > end:
        return None, -1, "packet too short for a header protection sample"
    aead, iv, hp = _ciphers(version, bytes(dcid))
    sample = d[pn_offset + 4:pn_offset + 4 + _SAMPLE_LEN]
    enc = hp.encryptor()
    mask = enc.update(sample) + enc.finalize()
    first_u = first ^ (mask[0] & 0x0F)
    pn_len = (first_u & 0x03) + 1
    header = bytearray(d[start:pn_offset + pn_len])
    header[0] = first_u
    pn = 0
    for i in range(pn_len):
        header[pn_offset - start + i] ^= mask[1 + i]
        pn = (pn << 8) | header[pn_offset - start + i]
    # The truncated packet number is taken as the full one: right for a client's first
    # Initials, which number from 0 (RFC 9000 §12.3), and we never see acknowledgements.
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = d[pn_offset + pn_len:end]
    if len(ct) < _AEAD_TAG:
        return None, -1, "payload shorter than the AEAD tag"
    try:
        plain = aead.decrypt(nonce, bytes(ct), bytes(header))
    except InvalidTag:
        return None, end if end < n else -1, "does not authenticate under the client's Initial keys"
    return plain, end if end < n else -1, ""


def crypto_frames(plain: bytes) -> tuple[list[tuple[int, bytes]], str]:
    """The CRYPTO frames (offset, data) of a decrypted Initial payload, and a reason when
    the frames could not all be read. Frame types allowed in Initial packets are PADDING,
    PING, ACK, CRYPTO and CONNECTION_CLOSE (RFC 9000 §12.4, Table 3)."""
    out: list[tuple[int, bytes]] = []
    p = 0
    n = len(plain)
    while p < n:
        ftype = plain[p]
        if ftype == 0x00 or ftype == 0x01:  # PADDING, PING
            p += 1
            continue
        if ftype == 0x06:  # CRYPTO: offset, length, data
            off, q = _varint(plain, p + 1)
            ln, q = _varint(plain, q)
            if off < 0 or ln < 0 or q + ln > n:
                return out, "CRYPTO frame truncated"
            out.append((off, plain[q:q + ln]))
            p = q + ln
        elif ftype in (0x02, 0x03):  # ACK (0x03 with ECN counts)
            q = p + 1
            vals = []
            for _ in range(4):  # largest acked, delay, range count, first range
                v, q = _varint(plain, q)
                if v < 0:
                    return out, "ACK frame truncated"
                vals.append(v)
            extra = 2 * vals[2] + (3 if ftype == 0x03 else 0)
            if extra > n:
                return out, "ACK frame range count larger than the packet"
            for _ in range(extra):
                v, q = _varint(plain, q)
                if v < 0:
                    return out, "ACK frame truncated"
            p = q
        elif ftype == 0x1C:  # CONNECTION_CLOSE: error code, frame type, reason
            _, q = _varint(plain, p + 1)
            _, q = _varint(plain, q)
            ln, q = _varint(plain, q)
            if ln < 0 or q + ln > n:
                return out, "CONNECTION_CLOSE frame truncated"
            p = q + ln
        else:
            return out, f"frame type 0x{ftype:02x} not allowed in an Initial packet"
    return out, ""


class QuicInitialSession:
    """The client side of one UDP flow: fed datagrams, answers MORE until the ClientHello
    is complete (DONE), or NONE when the flow does not look like QUIC."""

    def __init__(self) -> None:
        self._buf = bytearray()  # CRYPTO stream octets 0..len-1 (holes are zero)
        self._have = bytearray()  # 1 where _buf holds received octets
        self._initials = 0
        self._done = False

    def feed(self, datagram: bytes) -> Extraction:
        if self._done:
            return Extraction(Status.NONE, reason="ClientHello already read")
        if not looks_like_initial(datagram):
            # Before any Initial: not QUIC (as far as we read it). After one: a Handshake
            # or 0-RTT datagram between the client's Initials; keep waiting for them.
            if not self._initials:
                return Extraction(Status.NONE, reason="not a QUIC Initial packet")
            return MORE
        reasons = []
        pos = 0
        decrypted = False
        while pos >= 0 and self._initials < MAX_INITIALS:
            plain, pos, why = decrypt_initial(datagram, pos)
            if plain is None:
                if why != "not an Initial packet":
                    reasons.append(why)
                continue
            decrypted = True
            self._initials += 1
            frames, why = crypto_frames(plain)
            if why:
                reasons.append(why)
            for off, data in frames:
                self._add(off, data)
        if not decrypted:
            if self._initials >= MAX_INITIALS:
                return self._finish(Extraction(Status.ERROR,
                                               reason=f"no ClientHello in {MAX_INITIALS} Initial packets"))
            return Extraction(Status.NONE, reason="; ".join(reasons))
        upto = self._have.find(0)
        res = client_hello_from_handshake(self._buf if upto < 0 else self._buf[:upto])
        if res.status == Status.MORE:
            if self._initials >= MAX_INITIALS:
                return self._finish(Extraction(
                    Status.ERROR, reason=f"ClientHello incomplete after {MAX_INITIALS} Initial packets"))
            return MORE
        return self._finish(res)

    def _finish(self, res: Extraction) -> Extraction:
        self._done = True
        self._buf = bytearray()
        self._have = bytearray()
        return res

    def _add(self, off: int, data: bytes) -> None:
        end = min(off + len(data), MAX_CRYPTO_STREAM)
        if off >= end:
            return  # past the cap: beyond any ClientHello we read
        if end > len(self._buf):
            grow = end - len(self._buf)
            self._buf += bytes(grow)
            self._have += bytes(grow)
        if not any(self._have[off:end]):  # the common case: new data, copy it at once
            self._buf[off:end] = data[:end - off]
            self._have[off:end] = b"\x01" * (end - off)
            return
        # Retransmitted or overlapping data: the first copy wins (RFC 9000 §2.2 says the
        # data at an offset must not change; a peer that changes it is misbehaving).
        for i in range(off, end):
            if not self._have[i]:
                self._buf[i] = data[i - off]
                self._have[i] = 1
