"""appliance.policy.temporary_allow: the file contract other helpers rely on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.policy import temporary_allow as ta
from filters.errors import BadNameError, InputError

NOW = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)


def test_add_active_remove(tmp_path: Path) -> None:
    e = ta.add(tmp_path, "Video.Example.", "students", NOW + timedelta(hours=1), "alice", NOW)
    assert (e.name, e.policy, e.by, e.created) == ("video.example", "students", "alice", NOW)
    ta.add(tmp_path, "*.all.example", "*", NOW + timedelta(minutes=5), "bob", NOW)
    assert [x.name for x in ta.active(tmp_path, NOW)] == ["video.example", "all.example"]
    assert [x.name for x in ta.active(tmp_path, NOW + timedelta(minutes=5))] == ["video.example"]
    assert ta.active(tmp_path, NOW + timedelta(hours=1)) == []  # ends at `until`
    # Same name and policy: replaced, not duplicated.
    ta.add(tmp_path, "video.example", "students", NOW + timedelta(hours=2), "carol", NOW)
    assert [(x.by, x.until) for x in ta.active(tmp_path, NOW) if x.name == "video.example"] == [
        ("carol", NOW + timedelta(hours=2))]
    data = json.loads((tmp_path / ta.FILE).read_text())
    assert data["version"] == 1 and data["entries"][-1]["until"] == "2025-03-03T12:00:00Z"
    assert ta.remove(tmp_path, "VIDEO.example", "students") and not ta.remove(tmp_path, "video.example", "students")
    assert not ta.remove(tmp_path, "bad name", "*")
    assert [x.name for x in ta.active(tmp_path, NOW)] == ["all.example"]
    # Expired entries are dropped at the next write.
    ta.add(tmp_path, "later.example", "staff", NOW + timedelta(days=1), "d", NOW + timedelta(hours=3))
    assert [x.name for x in ta.read_all(tmp_path)] == ["later.example"]


def test_validation(tmp_path: Path) -> None:
    with pytest.raises(BadNameError):
        ta.add(tmp_path, "not a name", "students", NOW + timedelta(hours=1), "a", NOW)
    with pytest.raises(InputError):
        ta.add(tmp_path, "ok.example", "students", NOW, "a", NOW)  # ends now
    with pytest.raises(InputError):
        ta.add(tmp_path, "ok.example", " ", NOW + timedelta(hours=1), "a", NOW)
    assert ta.active(tmp_path, NOW) == []  # nothing written


def test_damaged_file_reads_as_none_and_is_replaced(tmp_path: Path) -> None:
    (tmp_path / ta.FILE).write_text("{not json")
    assert ta.active(tmp_path, NOW) == []
    (tmp_path / ta.FILE).write_text(json.dumps({"entries": [{"name": "a.example"}, {"name": "x y", "policy": "*",
                                                "until": "2030-01-01T00:00:00Z"}, {"name": "b.example", "policy": "*",
                                                "until": "2030-01-01T00:00:00Z", "by": "x"}]}))
    assert [e.name for e in ta.active(tmp_path, NOW)] == ["b.example"]
    ta.add(tmp_path, "c.example", "*", NOW + timedelta(hours=1), "a", NOW)
    assert [e.name for e in ta.active(tmp_path, NOW)] == ["b.example", "c.example"]
