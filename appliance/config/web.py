"""The config's ``web:`` section (the status page, admin, API and block page; appliance/web/).

```yaml
web:
  enabled: true                      # default: true when the section is present
  listen: "127.0.0.1:8080"           # status page, admin and API (a LAN address to share it)
  blockpage_listen: "0.0.0.0:80"     # optional: the block page (HTTP only, see docs/deployment.md)
  admin_password_hash: "scrypt$32768$8$1$<salt b64>$<key b64>"   # `schoolgate web hash-password`
  tls_proxy: false                   # true when a TLS reverse proxy fronts the page: cookies get Secure
```

A config without a ``web:`` section runs no web server (the embedded default config has one,
so a plain ``schoolgate run`` serves http://127.0.0.1:8080). The keys and their shapes are
declared in config/schema.json; what is checked here is what it cannot: addresses parse, the
password hash is one (appliance/config/passwords.py), the two listen addresses differ. Every
problem is appended to the loader's error list with the value's file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config.passwords import PasswordHashError, parse_password_hash
from appliance.config.schema import ConfigDoc
from appliance.config.values import one_or_many, parse_hostport
from filters.errors import ConfigError

__all__ = ["WebConfig", "parse_web", "DEFAULT_WEB_LISTEN"]

DEFAULT_WEB_LISTEN = ("127.0.0.1", 8080)


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = False
    listen: tuple[str, int] = DEFAULT_WEB_LISTEN
    blockpage_listen: tuple[tuple[str, int], ...] = ()
    admin_password_hash: str | None = None  # None: admin login is disabled
    tls_proxy: bool = False


def parse_web(doc: ConfigDoc, d: dict, errors: list[ConfigError]) -> WebConfig:
    """The ``web:`` section; absent means no web server, present (even empty) means one."""
    if "web" not in d:
        return WebConfig()
    s = d["web"] or {}
    got = {k: s[k] for k in ("enabled", "tls_proxy") if k in s}
    if "listen" in s:
        hp = parse_hostport(s["listen"], default_port=80)
        if hp is None:
            errors.append(doc.error(f"not an IP address with port (127.0.0.1:8080 or [::1]:8080): {s['listen']!r}",
                                    "web", "listen"))
        else:
            got["listen"] = hp
    if "blockpage_listen" in s:
        out = []
        for at, item in one_or_many(s["blockpage_listen"]):
            hp = parse_hostport(item, default_port=80)
            if hp is None:
                errors.append(doc.error(f"not an IP address with optional port (0.0.0.0:80 or [::]:80): {item!r}",
                                        "web", "blockpage_listen", *at))
            else:
                out.append(hp)
        got["blockpage_listen"] = tuple(out)
    if "admin_password_hash" in s:
        try:
            parse_password_hash(s["admin_password_hash"])
            got["admin_password_hash"] = s["admin_password_hash"]
        except PasswordHashError as exc:
            errors.append(doc.error(f"{exc} (make one with `schoolgate web hash-password`)", "web",
                                    "admin_password_hash"))
    web = WebConfig(**{"enabled": True, **got})
    if web.enabled and web.listen in web.blockpage_listen:
        errors.append(doc.error("must differ from web.listen", "web", "blockpage_listen"))
    return web
