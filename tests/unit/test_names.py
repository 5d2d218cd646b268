"""filters/names.py: canonical names (docs/matching.md), the IP heuristic and the wire form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.errors import BadNameError
from filters.names import (
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    looks_like_ip,
    name_to_wire,
    normalise_domain,
    normalise_pattern,
    wire_to_name,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  example.com \t", "example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("例え。jp", "xn--r8jz45g.jp"),  # ideographic full stop is a label separator
        ("ｅｘａｍｐｌｅ．ｃｏｍ", "example.com"),  # full-width forms map to ASCII, UTS #46
        ("_dns.resolver.arpa", "_dns.resolver.arpa"),
        ("-odd-.example", "-odd-.example"),
        ("localhost", "localhost"),
        ("a" * MAX_LABEL_LENGTH + ".com", "a" * MAX_LABEL_LENGTH + ".com"),
    ],
)
def test_normalise_domain(text: str, expected: str) -> None:
    assert normalise_domain(text) == expected


def test_longest_name_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == MAX_NAME_LENGTH
    assert normalise_domain(name) == name
    assert normalise_domain(name + ".") == name


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty name"),
        ("   ", "empty name"),
        (".", "empty name"),
        ("a..b", "empty label"),
        (".a.com", "empty label"),
        ("a.com..", "empty label"),
        ("a" * 64 + ".com", "label longer than 63 characters (64)"),
        (".".join(["a" * 63] * 3 + ["b" * 62]), "name longer than 253 characters (254)"),
        ("a b.com", "bad character ' '"),
        ("ex!ample.com", "bad character '!'"),
        ("*.example.com", "bad character '*'"),
        ("http://x.com/", "bad character ':'"),
        ("\x00\x01.com", "bad character '\\x00'"),
    ],
)
def test_normalise_domain_rejects(text: str, reason: str) -> None:
    with pytest.raises(BadNameError) as info:
        normalise_domain(text)
    assert info.value.reason == reason


@pytest.mark.parametrize("text", ["\ufffd\ufffd.com", "a\u200db.com", "\udcff.com"])
def test_bad_internationalised_names(text: str) -> None:
    with pytest.raises(BadNameError) as info:
        normalise_domain(text)
    assert info.value.reason.startswith("bad internationalised name")


def test_bad_name_error_is_a_value_error() -> None:
    # Callers outside the package may catch ValueError; the tree promises both.
    with pytest.raises(ValueError):
        normalise_domain("a..b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", ("example.com", False)),
        ("*.Example.com", ("example.com", True)),
        (".example.com", ("example.com", False)),
        ("  *.bücher.de  ", ("xn--bcher-kva.de", True)),
    ],
)
def test_normalise_pattern(text: str, expected: tuple[str, bool]) -> None:
    assert normalise_pattern(text) == expected


@pytest.mark.parametrize("text", ["*.*.example.com", "a.*.example.com", "..example.com", "*."])
def test_normalise_pattern_rejects(text: str) -> None:
    with pytest.raises(BadNameError):
        normalise_pattern(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", True),
        ("999.1.1.1", True),  # looks like one; ipaddress decides whether it is one
        ("::1", True),
        ("2001:db8::1", True),
        ("1.2.3", False),
        ("1.2.3.4.5", False),
        ("1.2.3.4/24", False),
        ("example.com", False),
        ("0.0.0.0.example.com", False),
    ],
)
def test_looks_like_ip(text: str, expected: bool) -> None:
    assert looks_like_ip(text) is expected


def test_name_to_wire() -> None:
    assert name_to_wire("www.example.com") == b"\x03www\x07example\x03com\x00"
    assert name_to_wire("") == b"\x00"


def test_wire_to_name() -> None:
    assert wire_to_name(b"\x03WWW\x07Example\x03com\x00") == "www.example.com"
    assert wire_to_name(b"\x00") == ""
    assert wire_to_name(b"junk\x01a\x00", start=4) == "a"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "name runs past the end of the buffer"),
        (b"\x03www", "name runs past the end of the buffer"),
        (b"\x05ab", "name runs past the end of the buffer"),
        (b"\xc0\x0c", "label length byte 192 (compression or extended label)"),
        (b"\x40" + b"a" * 64 + b"\x00", "label length byte 64 (compression or extended label)"),
    ],
)
def test_wire_to_name_rejects(wire: bytes, reason: str) -> None:
    with pytest.raises(BadNameError) as info:
        wire_to_name(wire)
    assert info.value.reason == reason


# -- properties ------------------------------------------------------------------------------

_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=MAX_LABEL_LENGTH)
_NAMES = st.lists(_LABEL, min_size=1, max_size=8).map(".".join).filter(
    lambda n: len(n) <= MAX_NAME_LENGTH
)
# Letters from several scripts, case, dots of several kinds, and junk: enough to reach the
# IDNA path, the ASCII path and every rejection.
_NAMEISH = st.text(
    st.sampled_from("aAzZ09-_.。．ü ÜßéЖж例え\u200d\x00!*") | st.characters(), max_size=40
)


@settings(max_examples=500)
@given(_NAMEISH)
def test_normalise_domain_is_idempotent_and_raises_only_bad_name(text: str) -> None:
    try:
        out = normalise_domain(text)
    except BadNameError:
        return
    assert normalise_domain(out) == out
    assert out == out.lower() and out.isascii() and not out.endswith(".")
    assert len(out) <= MAX_NAME_LENGTH


@given(_NAMES)
def test_valid_names_are_fixed_points(name: str) -> None:
    assert normalise_domain(name) == name
    assert normalise_domain(name.upper() + ".") == name


@given(_NAMES)
def test_wire_round_trip(name: str) -> None:
    wire = name_to_wire(name)
    assert len(wire) <= 255
    assert wire_to_name(wire) == name
