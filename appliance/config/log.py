"""The config's ``log:`` section: the query log, client privacy, retention.

    log:
      queries: blocked        # all | blocked | off
      clients: hash           # hash | none | ip
      retention_days: 7       # query log files kept, 1 .. 366

Defaults keep as little about children as still answers "what was blocked": only blocked
queries, client addresses replaced by a keyed hash whose key changes every day (docs/observability.md,
"Privacy defaults"). The values, their ranges and their meaning are declared in
config/schema.json; loaded by appliance.config.load.load_config once the schema has passed.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config.schema import ConfigDoc
from filters.errors import ConfigError

__all__ = ["LogConfig", "parse_log", "DEFAULT_RETENTION_DAYS"]

# A week answers "what happened on Monday" on a Friday; the schema's cap, a school year, is
# the longest a school would be asked to keep anything (and more than the data partition holds).
DEFAULT_RETENTION_DAYS = 7


@dataclass(frozen=True)
class LogConfig:
    queries: str = "blocked"  # all | blocked | off
    clients: str = "hash"  # hash | none | ip
    retention_days: int = DEFAULT_RETENTION_DAYS


def parse_log(doc: ConfigDoc, d: dict, errors: list[ConfigError]) -> LogConfig:
    """The ``log:`` section (defaults for what is missing)."""
    s = d.get("log")
    if s is None:
        return LogConfig()
    got = {k: s[k] for k in ("queries", "clients", "retention_days") if k in s}
    if got.get("queries") is False:  # YAML reads a bare `off` as false
        got["queries"] = "off"
    return LogConfig(**got)
