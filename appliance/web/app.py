"""Routes of the status page, admin actions, API and the block page.

Two handlers on one state object: ``WebApp.main`` (web.listen) and ``WebApp.blockpage``
(web.blockpage_listen). No route reads a file named by the request (the only "static" file,
/style.css, is a constant), so there is no path to traverse; the parser refuses dot
segments anyway.

Auth rules, in one place (``_admin``): an admin route needs a live session cookie (else 401)
and, for every POST, the session's CSRF token in the form field ``csrf`` or the header
``X-CSRF-Token`` (else 403); a request whose Origin header names another host is refused
(403) before anything else. Every admin action and every view of the events (the query log)
is appended to the audit log (web/audit.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from appliance.bundles.select import resolve_bundle
from appliance.bundles.served import Builder, Built
from appliance.config.load import Config
from appliance.observe.stats import SharedStats
from appliance.policy import temporary_allow
from appliance.updates.state import pid_alive, read_run_state
from appliance.web import pages
from appliance.web.audit import MAX_REASON, UnblockStore, audit, read_audit
from appliance.web.auth import LoginThrottle, SessionStore, csrf_ok, verify_password
from appliance.web.data import collect
from appliance.web.http import HttpError, Request, Response
from appliance.web.metrics import CONTENT_TYPE as METRICS_TYPE
from appliance.web.metrics import render_metrics
from filters.errors import BadNameError, InputError, SchoolgateError
from filters.names import normalise_domain

__all__ = ["WebApp", "SESSION_COOKIE", "LOGIN_COOKIE", "UNBLOCK_RATE"]

log = logging.getLogger("schoolgate.web")

SESSION_COOKIE = "sg_session"
LOGIN_COOKIE = "sg_login"
ADMIN_USER = "admin"
# Unblock requests per client address per hour: a pupil asks for a few sites, not hundreds.
UNBLOCK_RATE = 10
# How often the web process looks for a new active bundle (it serves no DNS: a second is plenty).
BUNDLE_CHECK = 2.0
_FLASH = {"update": "Update check requested.", "allow": "Temporary allow added.",
          "decided": "Unblock request decided.", "loggedout": "Logged out.", "login": "Logged in."}


def _utc(now: datetime) -> str:
    return now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _json(data: object, status: int = 200) -> Response:
    return Response(status, (json.dumps(data, default=str) + "\n").encode(), "application/json")


def _html(body: bytes, status: int = 200) -> Response:
    return Response(status, body)


def _redirect(to: str) -> Response:
    return Response(303, b"", "text/plain", [("Location", to)])


def _wants_html(req: Request) -> bool:
    return "text/html" in req.header("accept") and not req.header("x-csrf-token")


@dataclass
class WebApp:
    cfg: Config
    builder: Builder | None  # None: the bundle is not followed and reload() does nothing
    stats: SharedStats | None = None
    built: Built | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    mono: Callable[[], float] = time.monotonic
    root: Path = Path("/")
    sessions: SessionStore = field(default_factory=SessionStore)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    _unblock_hits: dict[str, list[float]] = field(default_factory=dict)
    _bundle_checked: float = 0.0

    # -- shared state ------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    def current_built(self):
        """The matcher and policies of the bundle now active (rebuilt when it moved)."""
        now = self.mono()
        if self.built is not None and now - self._bundle_checked < BUNDLE_CHECK:
            return self.built
        self._bundle_checked = now
        if self.builder is None:
            return self.built
        try:
            found = resolve_bundle(self.cfg)
            if found is not None and (self.built is None or found.path != self.built.bundle.path):
                self.built = self.builder.with_bundle(self.cfg, found)
        except SchoolgateError as exc:
            log.warning("web: cannot open the active bundle: %s", exc)
        return self.built

    def reload(self) -> None:
        if self.builder is None:
            return
        try:
            self.cfg = self.builder.config()
            self.built, self._bundle_checked = None, 0.0
        except SchoolgateError as exc:
            log.error("web: config refused, keeping the running one: %s", exc)

    def _temporary(self) -> list[dict]:
        try:
            return [{"name": t.name, "policy": t.policy, "until": _utc(t.until), "by": t.by,
                     "created": _utc(t.created)} for t in temporary_allow.active(self.state_dir, self.clock())]
        except (SchoolgateError, OSError, ValueError):
            return []

    def record(self) -> dict:
        return collect(self.cfg, self.current_built(), self.stats, self.clock(), self._temporary(), self.root)

    def events(self, limit: int = 50) -> list[dict]:
        if self.stats is None:
            return []
        b = self.current_built()
        names = b.bundle.catalog.names if b is not None else (lambda _m: [])
        try:
            if hasattr(self.stats, "events_named"):
                return list(self.stats.events_named(names, limit))
            return list(self.stats.events(limit))
        except Exception:
            log.exception("web: cannot read events")
            return []

    def _audit(self, req: Request, action: str, by: str = ADMIN_USER, **details: object) -> None:
        try:
            audit(self.state_dir, _utc(self.clock()), action, by, req.client, **details)
        except OSError as exc:  # refuse the action rather than do it unaudited
            raise HttpError(503, f"cannot write the audit log: {exc.strerror}") from exc

    # -- auth --------------------------------------------------------------------------------
    def _session(self, req: Request):
        return self.sessions.get(req.cookies.get(SESSION_COOKIE), self.mono())

    def _same_origin(self, req: Request) -> None:
        # "Origin: null" carries no information: browsers send it for every form POST from a
        # page with Referrer-Policy no-referrer (ours). The CSRF token and SameSite=Strict
        # still hold; a real other origin is refused here first.
        origin = req.header("origin")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != req.header("host").lower():
            raise HttpError(403, "cross-origin request refused")

    def _admin(self, req: Request, form: dict | None = None):
        """The session of an admin request, or HttpError 401 (no session) / 403 (no CSRF)."""
        self._same_origin(req)
        s = self._session(req)
        if s is None:
            raise HttpError(401, "log in first (POST /login)")
        if req.method == "POST":
            token = (form or {}).get("csrf") or req.header("x-csrf-token")
            if not csrf_ok(s, token):
                raise HttpError(403, "missing or wrong CSRF token")
        return s

    def _cookie(self, name: str, value: str, max_age: int | None = None, path: str = "/") -> tuple[str, str]:
        attrs = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            attrs.append(f"Max-Age={max_age}")
        if self.cfg.web.tls_proxy:
            attrs.append("Secure")
        return ("Set-Cookie", "; ".join(attrs))

    # -- main listener -----------------------------------------------------------------------
    async def main(self, req: Request) -> Response:
        path, method = req.path, req.method
        get = method in ("GET", "HEAD")
        if path == "/style.css" and get:
            return Response(200, pages.STYLE.encode(), "text/css; charset=utf-8")
        if path == "/" and get:
            return self._status_page(req)
        if path == "/api/status" and get:
            return _json(self.record())
        if path == "/metrics" and get:
            return Response(200, render_metrics(self.record()), METRICS_TYPE)
        if path == "/login":
            if get:
                return self._login_form(None)
            if method == "POST":
                return await self._login(req)
        if path == "/logout" and method == "POST":
            form = req.form()
            self._admin(req, form)
            self.sessions.drop(req.cookies.get(SESSION_COOKIE))
            self._audit(req, "logout")
            r = _redirect("/?done=loggedout")
            r.headers.append(self._cookie(SESSION_COOKIE, "", 0))
            return r
        if path == "/api/events" and get:
            self._admin(req)
            ev = self.events(int(req.query.get("limit", "50")) if req.query.get("limit", "50").isdigit() else 50)
            self._audit(req, "events-view", count=len(ev), via="api")
            return _json({"events": ev})
        if path == "/api/update" and method == "POST":
            return self._update_now(req)
        if path == "/api/allow" and method == "POST":
            return self._allow(req)
        if path == "/admin/unblock" and method == "POST":
            return self._decide(req)
        if path == "/admin/audit" and get:
            self._admin(req)
            self._audit(req, "audit-view")
            return _html(pages.audit_page(read_audit(self.state_dir)[0]))
        if path == "/admin/audit.jsonl" and get:
            self._admin(req)
            self._audit(req, "audit-download")
            r = Response(200, read_audit(self.state_dir, 0)[1], "application/x-ndjson")
            r.headers.append(("Content-Disposition", 'attachment; filename="schoolgate-audit.jsonl"'))
            return r
        if path == "/admin/events" and get:
            self._admin(req)
            ev = self.events(500)
            self._audit(req, "events-view", count=len(ev), via="page")
            return _html(pages.events_page(ev))
        known = {"/", "/style.css", "/api/status", "/metrics", "/login", "/logout", "/api/events", "/api/update",
                 "/api/allow", "/admin/unblock", "/admin/audit", "/admin/audit.jsonl", "/admin/events"}
        if path in known:
            raise HttpError(405, "method not allowed here")
        raise HttpError(404, "no such page")

    def _status_page(self, req: Request) -> Response:
        s = self._session(req)
        rec = self.record()
        admin = None
        if s is not None:
            ev = self.events(20)
            self._audit(req, "events-view", count=len(ev), via="status page")
            admin = {"csrf": s.csrf, "user": s.user, "events": ev, "requests": UnblockStore(self.state_dir).all()[:100]}
        flash = _FLASH.get(req.query.get("done", ""))
        return _html(pages.status_page(rec, self.clock(), admin, flash, bool(self.cfg.web.admin_password_hash)))

    def _login_form(self, error: str | None, status: int = 200) -> Response:
        token = secrets.token_urlsafe(24)
        r = _html(pages.login_page(token, error, bool(self.cfg.web.admin_password_hash)), status)
        r.headers.append(self._cookie(LOGIN_COOKIE, token, 600, "/login"))
        return r

    async def _login(self, req: Request) -> Response:
        self._same_origin(req)
        stored = self.cfg.web.admin_password_hash
        if not stored:
            raise HttpError(403, "admin login is not configured")
        wait = self.throttle.retry_after(req.client, self.mono())
        if wait > 0:
            self._audit(req, "login-locked-out", by="?")
            r = _html(pages.message_page("Too many attempts", f"Try again in {int(wait) + 1} s."), 429)
            r.headers.append(("Retry-After", str(int(wait) + 1)))
            return r
        form = req.form()
        given, cookie = form.get("csrf", ""), req.cookies.get(LOGIN_COOKIE, "")
        if not given or not cookie or not hmac.compare_digest(given.encode(), cookie.encode()):
            raise HttpError(403, "missing or wrong login form token (load /login again)")
        password = form.get("password", "")[:1024]
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, password, stored)
        if not ok:
            self.throttle.failed(req.client, self.mono())
            self._audit(req, "login-failed", by="?")
            return self._login_form("Wrong password.", 401)
        self.throttle.succeeded(req.client)
        token, _ = self.sessions.create(ADMIN_USER, self.mono())
        self._audit(req, "login")
        r = _redirect("/?done=login")
        r.headers.append(self._cookie(SESSION_COOKIE, token))
        r.headers.append(self._cookie(LOGIN_COOKIE, "", 0, "/login"))
        return r

    def _form(self, req: Request) -> dict:
        ctype = req.header("content-type").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = json.loads(req.body or b"{}")
            except ValueError:
                raise HttpError(400, "malformed JSON body") from None
            if not isinstance(data, dict):
                raise HttpError(400, "the JSON body must be an object")
            return {str(k): str(v) for k, v in data.items()}
        return req.form()

    def _done(self, req: Request, what: str, data: dict) -> Response:
        return _redirect(f"/?done={what}") if _wants_html(req) else _json(data)

    def _update_now(self, req: Request) -> Response:
        form = self._form(req)
        self._admin(req, form)
        pid = read_run_state(self.state_dir).get("pid")
        if not pid_alive(pid):
            self._audit(req, "update-now", result="appliance not running")
            raise HttpError(503, "the appliance is not running (no live pid in run.json)")
        os.kill(pid, signal.SIGUSR2)
        self._audit(req, "update-now", result="requested", pid=pid)
        return self._done(req, "update", {"ok": True, "requested": "update check", "pid": pid})

    def _allow_now(self, req: Request, name: str, policy: str, seconds: int, why: str) -> dict:
        if policy != "*" and policy not in self._policy_names():
            raise HttpError(400, "unknown policy")
        now = self.clock()
        try:
            t = temporary_allow.add(self.state_dir, name, policy, now + timedelta(seconds=seconds), ADMIN_USER, now)
        except InputError as exc:  # a bad name (BadNameError), too many entries
            raise HttpError(400, exc.message) from None
        self._audit(req, "temporary-allow", name=t.name, policy=t.policy, until=_utc(t.until), why=why)
        return {"ok": True, "name": t.name, "policy": t.policy, "until": _utc(t.until)}

    def _policy_names(self) -> set[str]:
        b = self.current_built()
        return set(self.cfg.policies) | (set(b.policies.rules) if b is not None else set())

    def _allow(self, req: Request) -> Response:
        form = self._form(req)
        self._admin(req, form)
        name = form.get("name", "").strip()
        policy = form.get("policy", "*") or "*"
        seconds = pages.DURATIONS.get(form.get("duration", "1h"))
        if seconds is None:
            raise HttpError(400, f"duration must be one of {', '.join(pages.DURATIONS)}")
        if not name or len(name) > 253:
            raise HttpError(400, "a name of 1 to 253 characters is needed")
        return self._done(req, "allow", self._allow_now(req, name, policy, seconds, "admin"))

    def _decide(self, req: Request) -> Response:
        form = self._form(req)
        self._admin(req, form)
        store = UnblockStore(self.state_dir)
        r = store.get(form.get("id", ""))
        if r is None:
            raise HttpError(404, "no such unblock request")
        if r.get("decision") is not None:
            raise HttpError(409, "this request was already decided")
        decision = form.get("decision")
        now = _utc(self.clock())
        if decision == "reject":
            store.decide(now, r["id"], "rejected", ADMIN_USER)
            self._audit(req, "unblock-reject", name=r["name"], request=r["id"])
        elif decision in ("temporary", "permanent"):
            seconds = pages.PERMANENT_S if decision == "permanent" else pages.DURATIONS.get(form.get("duration", ""))
            if seconds is None:
                raise HttpError(400, f"duration must be one of {', '.join(pages.DURATIONS)}")
            asked = r.get("policy")
            policy = asked if isinstance(asked, str) and asked in self._policy_names() else "*"
            done = self._allow_now(req, r["name"], policy, seconds, f"unblock request {r['id']}")
            store.decide(now, r["id"], f"allowed ({decision})", ADMIN_USER, done["until"])
            self._audit(req, "unblock-approve", name=r["name"], request=r["id"], kind=decision)
        else:
            raise HttpError(400, "decision must be temporary, permanent or reject")
        return self._done(req, "decided", {"ok": True, "id": r["id"], "decision": decision})

    # -- block page listener -----------------------------------------------------------------
    def explain(self, host: str, client: str) -> dict:
        """What the block page says for ``host`` asked by ``client``."""
        h = host.strip()
        if h.startswith("["):
            h = h[1:h.find("]")] if "]" in h else ""
        elif h.count(":") == 1:
            h = h.split(":")[0]
        info: dict = {"name": None, "blocked": False}
        try:
            name = normalise_domain(h)
        except BadNameError:
            return info
        if all(c.isdigit() or c == "." for c in name):
            return info  # an address typed directly: not a blocked site
        info["name"] = name
        b = self.current_built()
        if b is None:
            return info
        rule = b.policies.for_client(client)
        v = b.matcher.match(name, int(rule.mask))
        info.update(blocked=v.blocked, categories=list(v.categories), rule=v.rule, sources=list(v.sources),
                    policy=rule.name)
        return info

    async def blockpage(self, req: Request) -> Response:
        if req.path == "/style.css" and req.method in ("GET", "HEAD"):
            return Response(200, pages.STYLE.encode(), "text/css; charset=utf-8")
        info = self.explain(req.header("host"), req.client)
        if req.method == "POST" and req.path == "/unblock":
            self._same_origin(req)
            form = req.form()
            name = form.get("name", "")
            try:
                name = normalise_domain(name)
            except BadNameError:
                raise HttpError(400, "not a domain name") from None
            now = self.mono()
            hits = [t for t in self._unblock_hits.get(req.client, []) if now - t < 3600]
            if len(hits) >= UNBLOCK_RATE:
                raise HttpError(429, "too many requests from this device; try again later")
            if len(self._unblock_hits) > 4096:
                self._unblock_hits.clear()
            self._unblock_hits[req.client] = hits + [now]
            again = self.explain(name, req.client)
            reason = form.get("reason", "")[:MAX_REASON]
            rid = UnblockStore(self.state_dir).add(_utc(self.clock()), name, reason,
                                                   ", ".join(again.get("categories") or []),
                                                   again.get("policy") or "", again.get("rule"))
            return _html(pages.block_page(again, sent=rid is not None, full=rid is None),
                         200 if rid is not None else 507)
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, "method not allowed")
        return _html(pages.block_page(info, full=UnblockStore(self.state_dir).full()), 200)
