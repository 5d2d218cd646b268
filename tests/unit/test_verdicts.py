"""filters/verdicts.py: a flow's name (raw bytes) -> verdict, categories, rule; cached, bounded."""

from __future__ import annotations

import pytest

from filters.catalog import ALL_CATEGORIES
from filters.verdicts import NameVerdict, Verdicts
from signatures.bundle import open_bundle
from tests.bundles import ALLOWED, BLOCKED, make_bundle


@pytest.fixture(scope="module")
def matcher(tmp_path_factory):
    return open_bundle(make_bundle(tmp_path_factory.mktemp("verdicts") / "b", 1)).domain_matcher()


def test_blocked_allowed_and_the_allow_list(matcher) -> None:
    v = Verdicts(matcher, ALL_CATEGORIES)
    assert v(b"www." + BLOCKED.encode()) == NameVerdict("block", ["gambling"], BLOCKED)
    assert v(ALLOWED.encode()).verdict == "allow"
    assert v(b"fine." + BLOCKED.encode()).verdict == "allow"  # the bundle's allow list wins
    assert Verdicts(matcher, 0)(BLOCKED.encode()).verdict == "allow"  # a policy blocking nothing


def test_names_are_judged_as_the_dns_server_judges_them(matcher) -> None:
    v = Verdicts(matcher, ALL_CATEGORIES)
    assert v(b"WWW." + BLOCKED.upper().encode()).verdict == "block"
    assert v(b"a_b=." + BLOCKED.encode()).verdict == "block"  # odd label bytes still match the suffix
    assert v("bücher.".encode() + BLOCKED.encode()).verdict == "block"  # raw UTF-8 mapped to an A-label


@pytest.mark.parametrize("bad", [b"", b"a..b", b"x" * 64 + b".test", (b"a" * 60 + b".") * 5 + b"test",
                                 b"\xff\xfe.test"])
def test_what_is_not_a_name_is_an_error_not_a_verdict(matcher, bad: bytes) -> None:
    assert Verdicts(matcher, ALL_CATEGORIES)(bad) == NameVerdict("error", [], None)


def test_the_cache_is_bounded_and_answers_stay_right(matcher) -> None:
    v = Verdicts(matcher, ALL_CATEGORIES, max_names=3)
    for i in range(10):
        assert v(b"n%d." % i + BLOCKED.encode()).verdict == "block"
        assert len(v) <= 3
    assert v(ALLOWED.encode()).verdict == "allow"
