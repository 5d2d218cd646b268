"""The config's ``web:`` section (the status page, admin, API and block page; appliance/web/).

```yaml
web:
  enabled: true                      # default: true when the section is present
  listen: "127.0.0.1:8080"           # status page, admin and API (a LAN address to share it)
  blockpage_listen: "0.0.0.0:80"     # optional: the block page (HTTP only, see README)
  admin_password_hash: "scrypt$32768$8$1$<salt b64>$<key b64>"   # `schoolgate web hash-password`
  tls_proxy: false                   # true when a TLS reverse proxy fronts the page: cookies get Secure
```

A config without a ``web:`` section runs no web server (the embedded default config has one,
so a plain ``schoolgate run`` serves http://127.0.0.1:8080). Every problem is appended to the
loader's error list with the value's file:line:col, so check-config reports them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config_dns import parse_hostport
from filters.errors import ConfigError
from signatures.yamldoc import YamlDoc

__all__ = ["WebConfig", "parse_web", "DEFAULT_WEB_LISTEN"]

DEFAULT_WEB_LISTEN = ("127.0.0.1", 8080)
_WEB_KEYS = {"enabled", "listen", "blockpage_listen", "admin_password_hash", "tls_proxy"}


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = False
    listen: tuple[str, int] = DEFAULT_WEB_LISTEN
    blockpage_listen: tuple[tuple[str, int], ...] = ()
    admin_password_hash: str | None = None  # None: admin login is disabled
    tls_proxy: bool = False


def parse_web(doc: YamlDoc, d: dict, errors: list[ConfigError]) -> WebConfig:
    """The ``web:`` section; absent means no web server."""
    if "web" not in d:
        return WebConfig()
    s = d.get("web")
    if s is None:
        s = {}
    if not isinstance(s, dict):
        errors.append(doc.error("web must be a mapping (listen, blockpage_listen, admin_password_hash, enabled)",
                                "web"))
        return WebConfig()
    for k in s:
        if k not in _WEB_KEYS:
            errors.append(doc.key_error(f"unknown key web.{k} (known: {', '.join(sorted(_WEB_KEYS))})", "web", k))
    got: dict = {"enabled": True}
    for key in ("enabled", "tls_proxy"):
        if key in s:
            if not isinstance(s[key], bool):
                errors.append(doc.error(f"web.{key} must be true or false", "web", key))
            else:
                got[key] = s[key]
    if "listen" in s:
        hp = parse_hostport(s["listen"], default_port=80)
        if hp is None:
            errors.append(doc.error(f"web.listen: not an IP address with port (127.0.0.1:8080 or "
                                    f"[::1]:8080): {s['listen']!r}", "web", "listen"))
        else:
            got["listen"] = hp
    if "blockpage_listen" in s:
        v = s["blockpage_listen"]
        items = [v] if isinstance(v, str) else v
        out = []
        if not isinstance(items, list):
            errors.append(doc.error("web.blockpage_listen must be host:port or a list of them",
                                    "web", "blockpage_listen"))
            items = []
        for i, item in enumerate(items):
            hp = parse_hostport(item, default_port=80)
            if hp is None:
                errors.append(doc.error(f"web.blockpage_listen: not an IP address with optional port "
                                        f"(0.0.0.0:80 or [::]:80): {item!r}", "web", "blockpage_listen",
                                        *((i,) if isinstance(v, list) else ())))
            else:
                out.append(hp)
        got["blockpage_listen"] = tuple(out)
    if "admin_password_hash" in s:
        from appliance.web.auth import PasswordHashError, parse_password_hash

        h = s["admin_password_hash"]
        try:
            if not isinstance(h, str):
                raise PasswordHashError("must be a string")
            parse_password_hash(h)
            got["admin_password_hash"] = h
        except PasswordHashError as exc:
            errors.append(doc.error(f"web.admin_password_hash: {exc} (make one with "
                                    "`schoolgate web hash-password`)", "web", "admin_password_hash"))
    web = WebConfig(**got)
    if web.enabled and web.listen in web.blockpage_listen:
        errors.append(doc.error("web.blockpage_listen must differ from web.listen", "web", "blockpage_listen"))
    return web
