"""SafeSearch by DNS: search hostnames answered with a CNAME to the engine's safe endpoint.

Each engine documents a DNS way for a network to force its strictest (or a restricted)
mode: the search hostname is made a CNAME of a special endpoint that serves the same site
with the filter locked on. The DNS server answers a rewritten name with that CNAME plus the
endpoint's address records, resolved through the upstreams and cached like any answer
(appliance/dns/pipeline.py); this module is the pure part: which names, which targets.

- Google: ``www.google.<domain>`` for every domain Google serves search on
  (safesearch_google_domains.txt, from https://www.google.com/supported_domains) →
  ``forcesafesearch.google.com`` (https://support.google.com/websearch/answer/186669).
- Bing: ``bing.com``, ``www.bing.com`` → ``strict.bing.com``
  (https://help.bing.microsoft.com/#apex/bing/en-us/10003).
- DuckDuckGo: ``duckduckgo.com``, ``www.duckduckgo.com`` → ``safe.duckduckgo.com``
  (https://duckduckgo.com/duckduckgo-help-pages/features/safe-search/).
- YouTube: ``www.youtube.com``, ``m.youtube.com``, ``youtubei.googleapis.com``,
  ``youtube.googleapis.com``, ``www.youtube-nocookie.com`` → ``restrictmoderate.youtube.com``
  (Restricted Mode "moderate") or ``restrict.youtube.com`` ("strict")
  (https://support.google.com/a/answer/6214622). Moderate is offered because strict hides
  much of what teachers show in class.

Config (per policy, ``safesearch:``)::

    safesearch: true          # google, bing, duckduckgo on; youtube moderate
    safesearch: false         # off (the default)
    safesearch: {google: true, bing: true, duckduckgo: false, youtube: strict}
                              # missing engines are off; youtube: off | moderate | strict
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from filters.dns_answer import opt_record
from filters.dns_response import read_name, walk_records
from filters.dns_wire import HEADER_LEN
from filters.errors import InputError
from filters.names import name_to_wire

__all__ = ["SafeSearch", "ENGINES", "YOUTUBE_MODES", "GOOGLE_TARGET", "BING_TARGET", "DUCKDUCKGO_TARGET",
           "YOUTUBE_TARGETS", "BING_NAMES", "DUCKDUCKGO_NAMES", "YOUTUBE_NAMES", "google_domains",
           "parse_safesearch", "rewrite_answer", "MAX_CNAME_TTL"]

ENGINES = ("google", "bing", "duckduckgo", "youtube")
YOUTUBE_MODES = ("off", "moderate", "strict")
GOOGLE_TARGET = "forcesafesearch.google.com"
BING_TARGET = "strict.bing.com"
DUCKDUCKGO_TARGET = "safe.duckduckgo.com"
YOUTUBE_TARGETS = {"moderate": "restrictmoderate.youtube.com", "strict": "restrict.youtube.com"}
BING_NAMES = ("bing.com", "www.bing.com")
DUCKDUCKGO_NAMES = ("duckduckgo.com", "www.duckduckgo.com")
YOUTUBE_NAMES = ("www.youtube.com", "m.youtube.com", "youtubei.googleapis.com", "youtube.googleapis.com",
                 "www.youtube-nocookie.com")
_GOOGLE_FILE = "safesearch_google_domains.txt"


@lru_cache(maxsize=1)
def google_domains() -> tuple[str, ...]:
    """Google's search domains (``google.com``, ``google.co.uk``, ...) from the data file."""
    text = resources.files("filters").joinpath(_GOOGLE_FILE).read_text(encoding="ascii")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.lstrip("."))
    return tuple(out)


@dataclass(frozen=True)
class SafeSearch:
    """Which engines a policy forces into safe mode."""

    google: bool = False
    bing: bool = False
    duckduckgo: bool = False
    youtube: str = "off"  # off | moderate | strict

    def __post_init__(self) -> None:
        if self.youtube not in YOUTUBE_MODES:
            raise InputError(f"youtube must be one of {', '.join(YOUTUBE_MODES)}, not {self.youtube!r}")

    @property
    def enabled(self) -> bool:
        return self.google or self.bing or self.duckduckgo or self.youtube != "off"

    def rewrites(self) -> dict[str, str]:
        """hostname -> safe endpoint, for every name this setting rewrites."""
        return dict(_rewrites(self))

    def wire_rewrites(self) -> dict[bytes, bytes]:
        """The same as lower-case wire names (what the pipeline looks QNAMEs up by)."""
        return dict(_wire_rewrites(self))


@lru_cache(maxsize=64)
def _rewrites(s: SafeSearch) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    if s.google:
        out.update((f"www.{d}", GOOGLE_TARGET) for d in google_domains())
    if s.bing:
        out.update((n, BING_TARGET) for n in BING_NAMES)
    if s.duckduckgo:
        out.update((n, DUCKDUCKGO_TARGET) for n in DUCKDUCKGO_NAMES)
    if s.youtube != "off":
        out.update((n, YOUTUBE_TARGETS[s.youtube]) for n in YOUTUBE_NAMES)
    return tuple(out.items())


@lru_cache(maxsize=64)
def _wire_rewrites(s: SafeSearch) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name_to_wire(n), name_to_wire(t)) for n, t in _rewrites(s))


def parse_safesearch(value: object) -> SafeSearch:
    """The config value (see the module doc) -> SafeSearch; InputError says what is wrong."""
    if value is None or value is False:
        return SafeSearch()
    if value is True:
        return SafeSearch(True, True, True, "moderate")
    if not isinstance(value, dict):
        raise InputError("safesearch must be true, false or {google: bool, bing: bool, duckduckgo: bool, "
                         "youtube: off|moderate|strict}")
    unknown = sorted(str(k) for k in value if k not in ENGINES)
    if unknown:
        raise InputError(f"unknown search engine {unknown[0]!r} (known: {', '.join(ENGINES)})")
    flags = {}
    for engine in ("google", "bing", "duckduckgo"):
        v = value.get(engine, False)
        if not isinstance(v, bool):
            raise InputError(f"safesearch.{engine} must be true or false")
        flags[engine] = v
    yt = value.get("youtube", "off")
    if yt is False or yt is None:
        yt = "off"
    elif yt is True:
        yt = "moderate"
    if yt not in YOUTUBE_MODES:
        raise InputError(f"safesearch.youtube must be one of {', '.join(YOUTUBE_MODES)} (or true = moderate)")
    return SafeSearch(flags["google"], flags["bing"], flags["duckduckgo"], yt)


# -- the answer ------------------------------------------------------------------------------

# The CNAME's TTL: at most the endpoint's records' remaining TTL, and at most this, so that a
# SafeSearch setting turned off (or a temporary allow) reaches clients within minutes.
MAX_CNAME_TTL = 300
# Types whose RDATA holds names that may be compressed (RFC 3597 §4: only these well-known
# ones may be): (bytes before the name, names, bytes after the names).
_NAME_RDATA = {2: (0, 1), 5: (0, 1), 12: (0, 1), 39: (0, 1), 15: (2, 1), 6: (0, 2), 33: (6, 1)}


def _records(target: bytes, qtail: bytes, norm, body: bytes) -> tuple[list[bytes], list[bytes], list[int]]:
    """Answer and authority records of a cached response to (target, type), each rewritten
    without compression (its pointers were relative to the upstream's message, whose
    question was the endpoint; ours is the client's name). Returns (answers, authority, ttls)."""
    prefix = bytes(HEADER_LEN) + target + qtail
    msg = prefix + body
    an, ns, _ar = norm.counts
    out: tuple[list[bytes], list[bytes]] = ([], [])
    ttls = []
    for r in walk_records(msg, len(prefix), (an, ns, 0)):
        owner = read_name(msg, r.owner)[0]
        rdata = msg[r.rdata:r.rdata + r.rdlength]
        layout = _NAME_RDATA.get(r.rtype)
        if layout is not None:
            skip, names = layout
            pos = r.rdata + skip
            parts = [msg[r.rdata:pos]]
            for _ in range(names):
                name, pos = read_name(msg, pos)
                parts.append(name)
            parts.append(msg[pos:r.rdata + r.rdlength])
            rdata = b"".join(parts)
        out[r.section].append(owner + struct.pack(">HHIH", r.rtype, r.rclass, r.ttl, len(rdata)) + rdata)
        ttls.append(r.ttl)
    return out[0], out[1], ttls


def rewrite_answer(buf: bytes, q, target: bytes, norm, body: bytes, limit: int) -> bytes:
    """The answer to the client's query ``q`` in ``buf`` for a rewritten name: a CNAME from
    the question name to ``target`` (wire), then the endpoint's records for the query type
    from ``norm``/``body`` (a cached or fresh upstream response to the endpoint; None: the
    CNAME alone, as for ANY). The rcode is the endpoint's (RFC 6604). Larger than ``limit``:
    TC and no records, as filters.dns_answer.render_cached."""
    qtail = buf[q.qname_end:q.qname_end + 4]
    answers, authority, ttls = _records(target, qtail, norm, body) if norm is not None else ([], [], [])
    ttl = min([MAX_CNAME_TTL] + ttls)
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, ttl, len(target)) + target
    rcode = norm.rcode if norm is not None else 0
    # QR, RD copied; RA; CD copied; never AD (the CNAME is ours, not validated).
    flags = bytes((0x80 | (buf[2] & 0x01), 0x80 | (buf[3] & 0x10) | (rcode & 0xF)))
    opt = opt_record(do=q.do) if q.edns else b""
    question = buf[HEADER_LEN:q.qname_end + 4]
    records = cname + b"".join(answers) + b"".join(authority)
    if HEADER_LEN + len(question) + len(records) + len(opt) > limit:
        return (buf[:2] + bytes((flags[0] | 0x02, flags[1])) + b"\x00\x01\x00\x00\x00\x00"
                + (b"\x00\x01" if opt else b"\x00\x00") + question + opt)
    counts = struct.pack(">HHHH", 1, 1 + len(answers), len(authority), 1 if opt else 0)
    return buf[:2] + flags + counts + question + records + opt
