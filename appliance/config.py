"""The appliance config file (DESIGN.md §5 lists the keys tests rely on).

Every problem found is reported, each with file:line:col; a config with errors is refused
as a whole, so the running appliance keeps its last good config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from filters.errors import BadNameError, ConfigError
from filters.names import normalise_pattern
from signatures.yamldoc import YamlDoc, load_yaml

__all__ = ["Policy", "Config", "ConfigErrors", "load_config", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = "/var/lib/schoolgate"
_TOP_KEYS = {"state_dir", "bundle", "dns", "updates", "web", "policies", "local", "networks"}


class ConfigErrors(ConfigError):
    """Several config errors at once; str() lists them one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors), None)
        self.errors = errors


@dataclass(frozen=True)
class Policy:
    name: str
    block: tuple[str, ...]  # category names


@dataclass(frozen=True)
class Config:
    file: str
    state_dir: Path
    bundle: Path | None
    policies: dict[str, Policy] = field(default_factory=dict)
    local_block: tuple[str, ...] = ()
    local_allow: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict)

    def bundle_path(self) -> Path:
        """The bundle to serve: the configured one, else the active one in the state dir."""
        return self.bundle if self.bundle else self.state_dir / "bundles" / "current"


def load_config(path: str | Path, text: str | None = None) -> Config:
    doc = load_yaml(path, text)
    errors: list[ConfigError] = []
    d = doc.data if doc.data is not None else {}
    if not isinstance(d, dict):
        raise ConfigErrors([doc.error("config must be a mapping")])
    for k in d:
        if k not in _TOP_KEYS:
            errors.append(doc.key_error(f"unknown key {k!r} (known: {', '.join(sorted(_TOP_KEYS))})", k))
    base = Path(path).resolve().parent
    state_dir = _path(doc, d, "state_dir", base, errors) or Path(DEFAULT_STATE_DIR)
    bundle = _path(doc, d, "bundle", base, errors)
    policies: dict[str, Policy] = {}
    pol = d.get("policies", {}) or {}
    if not isinstance(pol, dict):
        errors.append(doc.error("policies must be a mapping name -> {block: [categories]}", "policies"))
        pol = {}
    for name, body in pol.items():
        if not isinstance(body, dict) or not isinstance(body.get("block", []), list):
            errors.append(doc.error("a policy is {block: [category, ...]}", "policies", name))
            continue
        cats = body.get("block", [])
        if not all(isinstance(c, str) for c in cats):
            errors.append(doc.error("categories must be names", "policies", name, "block"))
            continue
        policies[str(name)] = Policy(str(name), tuple(cats))
    local = d.get("local", {}) or {}
    lists: dict[str, tuple[str, ...]] = {"block": (), "allow": ()}
    if not isinstance(local, dict):
        errors.append(doc.error("local must be {block: [names], allow: [names]}", "local"))
        local = {}
    for kind in lists:
        items = local.get(kind, []) or []
        if not isinstance(items, list):
            errors.append(doc.error(f"local.{kind} must be a list of names", "local", kind))
            continue
        good = []
        for i, item in enumerate(items):
            try:
                normalise_pattern(str(item))
                good.append(str(item))
            except BadNameError as exc:
                errors.append(doc.error(f"local.{kind}: {exc.reason}: {item!r}", "local", kind, i))
        lists[kind] = tuple(good)
    if errors:
        raise ConfigErrors(errors)
    return Config(doc.file, state_dir, bundle, policies, lists["block"], lists["allow"], d)


def _path(doc: YamlDoc, d: dict, key: str, base: Path, errors: list[ConfigError]) -> Path | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        errors.append(doc.error(f"{key} must be a path", key))
        return None
    return (base / v).resolve()
