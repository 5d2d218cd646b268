"""schoolgate inspect on real captures: tshark is the oracle for the names found.

Two oracles: MANIFEST_tshark_hostnames.tsv (what tshark 4.0 found in each suricata-verify
pcap, shipped with the data) and, when tshark is installed, tshark itself run on every
shared pcap here. Agreement must be exact apart from the differences below, each
checked to still be a difference so the list stays honest:

- DNS inside cleartext HTTP/2 (DoH over h2c with prior knowledge, RFC 8484): tshark
  decodes HTTP/2 and the DNS messages in it; we do not parse HTTP/2. Real DoH runs inside
  TLS, where no middlebox sees the DNS, and the flow's SNI (e.g. dns.google, the bundle's
  doh category) is what we read and block.
- DNS on a port other than 53/5353/5355: tshark finds it heuristically; we read DNS on the
  DNS ports only (a query to another port is a bypass the port rules deal with).
- QUIC after version negotiation: tshark does not decrypt the client's v1 Initial sent
  after a VN packet; we do (each Initial's keys come from its own header, RFC 9001 §5.2).
- tshark's placeholders for names it cannot read ("<name too long>", "<Root>") are not
  names.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from appliance.pcap.inspect import inspect_capture
from filters.extract_http import _strip_host
from tests.bundles import make_bundle
from tests.conftest import SHARED_DATA

SV = SHARED_DATA / "pcaps" / "suricata-verify"
TCPDUMP = SHARED_DATA / "pcaps" / "tcpdump"
MANIFEST = SV / "MANIFEST_tshark_hostnames.tsv"
_DOH_H2C = "DoH inside cleartext HTTP/2 is not parsed"
# pcap (relative to its folder) -> (names tshark finds that we do not, names only we find, why)
DIFFERENCES: dict[str, tuple[set[tuple[str, str]], set[tuple[str, str]], str]] = {
    "tests/dns-over-http2/dns_over_https.pcap": (
        {("dns", "www.gstatic.com"), ("dns", "nav-edge.smartscreen.microsoft.com")}, set(), _DOH_H2C),
    "tests/dns-over-http2-post/dns_over_https_POST.pcap": ({("dns", n) for n in (
        "adservice.google.com", "www.gstatic.com", "consent.google.com", "googleads.g.doubleclick.net",
        "www.google.com", "ogs.google.com", "id.google.com", "example.com", "adservice.google.se",
        "apis.google.com", "detectportal.firefox.com", "ssl.gstatic.com")}, set(), _DOH_H2C),
    "dns_udp_8053.pcap": ({("dns", "www.tcpdump.org")}, set(), "DNS on port 8053 is not read"),
    "quic_vn.pcap": (set(), {("quic", "localhost")}, "tshark does not decrypt the Initial after VN"),
}


def found(pcap: Path, prefilter: bool = True) -> set[tuple[str, str]]:
    return {(f.proto, f.name.decode("ascii", "backslashreplace")) for f in inspect_capture(str(pcap), prefilter)}


def _norm(proto: str, value: str) -> tuple[str, str] | None:
    if not value or value.startswith("<"):
        return None
    if proto == "http":  # tshark reports the Host field as sent: port and brackets included
        return proto, _strip_host(value.encode()).decode()
    return proto, value.lower()  # names are compared lower-cased (docs/matching.md)


def manifest_rows() -> list[tuple[str, set[tuple[str, str]]]]:
    if not MANIFEST.is_file():
        return []
    rows = []
    for line in MANIFEST.read_text().splitlines()[1:]:
        cols = line.split("\t")
        want = set()
        for col, proto in zip(cols[1:], ("dns", "tls", "quic", "http")):
            for v in col.split("=", 1)[1].split(","):
                if (n := _norm(proto, v)) is not None:
                    want.add(n)
        rows.append((cols[0], want))
    return rows


def _check(key: str, got: set, want: set) -> None:
    only_tshark, only_us, why = DIFFERENCES.get(key, (set(), set(), ""))
    assert want - got == only_tshark, f"{key}: tshark finds names we miss ({why or 'no known reason'})"
    assert got - want == only_us, f"{key}: we find names tshark does not ({why or 'no known reason'})"


@pytest.mark.parametrize("rel, want", manifest_rows() or [pytest.param("", set(), marks=pytest.mark.skip(
    reason=f"{MANIFEST} (tshark's names per pcap) not found: set SCHOOLGATE_SHARED_DATA to a copy of "
           "the public lists and pcaps"))])
def test_names_agree_with_tshark_manifest(rel: str, want: set) -> None:
    _check(rel, found(SV / rel), want)


def _tshark_names(pcap: Path) -> set[tuple[str, str]]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "aggregator=\x1f",
         "-e", "frame.protocols", "-e", "tls.handshake.extensions_server_name", "-e", "dns.qry.name",
         "-e", "http.host"], capture_output=True, text=True, timeout=120, check=True).stdout
    names = set()
    for line in out.splitlines():
        protocols, sni, dns, host = (line.split("\t") + ["", "", "", ""])[:4]
        for proto, col in (("quic" if ":quic" in protocols else "tls", sni), ("dns", dns), ("http", host)):
            for v in col.split("\x1f"):
                if (n := _norm(proto, v)) is not None:
                    names.add(n)
    return names


def shared_pcaps() -> list[Path]:
    return sorted(p for d in (SV, TCPDUMP) if d.is_dir() for p in d.rglob("*.pcap"))


@pytest.mark.slow
def test_names_agree_with_tshark_run_here() -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (as root, tests/setup.sh installs it)")
    pcaps = shared_pcaps()
    if not pcaps:
        pytest.skip(f"no shared pcaps under {SHARED_DATA} (set SCHOOLGATE_SHARED_DATA to a copy of the "
                    "public lists and pcaps)")
    for p in pcaps:
        key = str(p.relative_to(SV)) if p.is_relative_to(SV) else p.name
        _check(key, found(p), _tshark_names(p))


def test_fast_path_equals_reference_and_nothing_raises() -> None:
    pcaps = shared_pcaps()
    if not pcaps:
        pytest.skip(f"no shared pcaps under {SHARED_DATA} (set SCHOOLGATE_SHARED_DATA to a copy of the "
                    "public lists and pcaps)")
    for p in pcaps:
        fast_stats, ref_stats = Counter(), Counter()
        fast = list(inspect_capture(str(p), True, stats=fast_stats))
        assert fast == list(inspect_capture(str(p), False, stats=ref_stats)), p
        for k, v in ref_stats.items():
            if k.startswith(("malformed", "dns:", "tls:", "quic:", "http:")):
                assert fast_stats[k] == v, (p, k)


def test_tcpdump_robustness_cases_are_counted() -> None:
    if not TCPDUMP.is_dir():
        pytest.skip(f"{TCPDUMP} (tcpdump's test pcaps) not found: set SCHOOLGATE_SHARED_DATA to a copy of "
                    "the public lists and pcaps")
    expect = {
        "dns-badlabel.pcap": "dns: question 1: name longer than 255 octets",
        "dns_fwdptr.pcap": "dns: question 1: compression pointer loops or points forward",
        "quic_32_bit_pointer_overflow.pcap": "skipped: IPv6 jumbogram (RFC 2675) not inspected",
        "ppp_ip_udp_dns.pcap": "skipped: not IPv4 or IPv6",
    }
    for name, reason in expect.items():
        stats: Counter = Counter()
        list(inspect_capture(str(TCPDUMP / name), stats=stats))
        assert stats[reason] == 1, (name, stats)


def test_dotprefix_suffix_semantics(tmp_path: Path) -> None:
    """suricata-verify's detect-dotprefix-*: a google.com entry matches maps.l.google.com
    but never agoogle.com (docs/matching.md: whole labels only)."""
    if not (SV / "tests" / "detect-dotprefix-03").is_dir():
        pytest.skip(f"{SV} (suricata-verify pcaps) not found: set SCHOOLGATE_SHARED_DATA to a copy of "
                    "the public lists and pcaps")
    from filters.verdicts import Verdicts
    from signatures.bundle import open_bundle

    bundle = make_bundle(tmp_path / "b", 1, extra=("google.com", "windowsupdate.com"))
    verdicts = Verdicts(open_bundle(bundle).domain_matcher(), (1 << 64) - 1)
    got = {}
    for n in ("01", "02", "03"):
        for f in inspect_capture(str(SV / "tests" / f"detect-dotprefix-{n}" / "input.pcap")):
            got[f.name.decode()] = verdicts(f.name)[0]
    assert got == {"www.download.windowsupdate.com": "block", "maps.google.co.uk": "allow",
                   "maps.l.google.com": "block", "agoogle.com": "allow"}
