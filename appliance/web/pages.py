"""Server-rendered HTML: status page, login, admin panels, audit log, block page.

Every value that reaches the markup goes through ``e()`` (html.escape with quote=True) —
names from DNS queries, unblock reasons, Host headers, list names, error texts: all of it
is attacker-controlled (Pi-hole and AdGuard Home have had XSS through crafted query names).
No script anywhere; no inline ``style=`` (the CSP forbids both); forms post to our own
routes and carry the CSRF token. The page stays well under 100 kB.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from appliance.web.charts import history_chart

__all__ = ["e", "STYLE", "layout", "status_page", "login_page", "block_page", "message_page",
           "audit_page", "events_page", "DURATIONS"]

# Temporary allow lengths offered in forms (seconds); "permanent" is 10 years.
DURATIONS = {"15m": 900, "1h": 3600, "4h": 4 * 3600, "1d": 86400, "7d": 7 * 86400}
PERMANENT_S = 3650 * 86400

STYLE = """\
:root{color-scheme:light;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body{margin:0 auto;max-width:60rem;padding:.5rem 1rem;color:#222;background:#fafafa;line-height:1.4}
h1{font-size:1.4rem;margin:.4rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem;border-bottom:1px solid #ddd}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:.4rem .8rem;margin:.6rem 0}
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{padding:.2rem .4rem;text-align:left;
border-bottom:1px solid #eee;vertical-align:top;overflow-wrap:anywhere}th{font-weight:600}
.ok{color:#17803d}.bad{color:#b42318;font-weight:600}.warn{color:#a15c00;font-weight:600}
.demo{background:#fff4cc;border:1px solid #e0b000;padding:.4rem;border-radius:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:.6rem}
.chart{width:100%;height:auto;max-height:11rem}code,.name{font-family:ui-monospace,monospace;
font-size:.85rem;overflow-wrap:anywhere}form.inline{display:inline}
input,select,button,textarea{font:inherit;padding:.3rem;margin:.15rem 0;max-width:100%}
button{cursor:pointer}.flash{background:#e8f3ff;border:1px solid #9cc3ef;padding:.4rem;border-radius:4px}
nav a{margin-right:.8rem}meter{width:8rem}
@media (max-width:40rem){body{padding:.3rem}td,th{padding:.15rem .25rem;font-size:.85rem}}
"""


def e(value: object) -> str:
    """Escape anything for HTML text and attribute values; None shows as a dash."""
    if value is None:
        return "&mdash;"
    return escape(str(value), quote=True)


def layout(title: str, body: str) -> bytes:
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{e(title)}</title><link rel=\"stylesheet\" href=\"/style.css\"></head>"
            f"<body>{body}</body></html>").encode()


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    s = abs(int(seconds))
    text = (f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h" if s < 172800
            else f"{s // 86400} days")
    return text


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def _rows(pairs: list[tuple[str, str]]) -> str:
    """Table rows; the *values* are already-escaped HTML fragments."""
    return "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">'


def _health(rec: dict) -> str:
    a, d, s = rec["appliance"], rec["dns"], rec["system"]
    fl = (rec.get("flows") or {}).get("state")
    running = '<span class="ok">running</span>' if a["running"] else '<span class="bad">not running</span>'
    dns_line = f"{running}, {e(d.get('workers') or '?')} worker(s) on {e(', '.join(d.get('listen') or []))}"
    ups = d.get("upstreams") or []
    lat = d.get("upstream_latency_ms") or {}
    up_text = e(", ".join(ups) or "none configured")
    if d.get("upstream_errors"):
        up_text += f' <span class="warn">{e(d["upstream_errors"])} errors</span>'
    if lat:
        up_text += " · latency " + e(", ".join(f"{k} {v}" for k, v in list(lat.items())[:6]))
    if fl is None:
        cap = "not running (no flow state)"
    else:
        mode = e(fl.get("mode") or "?")
        cap = (f'<span class="ok">{mode}</span> on {e(fl.get("interface"))}' if fl.get("running")
               else '<span class="warn">stopped</span>' if fl.get("enabled") else "disabled")
        if fl.get("capture"):
            cap += f" via {e(fl['capture'])}"
            if fl["capture"] == "bpf":
                cap += ' <span class="warn">(ClientHellos split over segments are not read)</span>'
        drops = (fl.get("counters") or {}).get("capture_drops")
        if drops:
            cap += f' <span class="warn">{e(drops)} packets dropped by the kernel</span>'
        if fl.get("error"):
            cap += f' <span class="bad">{e(fl["error"])}</span>'
        cap += f" (updated {e(fl.get('updated'))})"
    disk, mem = s.get("disk"), s.get("memory")
    disk_text = (f'<meter min="0" max="100" high="90" value="{e(disk["used_pct"])}"></meter> '
                 f'{e(disk["used_pct"])} % used, {e(_bytes(disk["free"]))} free') if disk else "—"
    mem_text = (f"{e(_bytes(mem.get('available')))} available of {e(_bytes(mem['total']))}" if mem else "—")
    temp = s.get("cpu_temp_c")
    temp_text = "no sensor" if temp is None else (
        f'<span class="{"warn" if temp >= 75 else "ok"}">{e(temp)} °C</span>')
    return "<section><h2>Health</h2><table>" + _rows([
        ("DNS", dns_line), ("Upstreams", up_text), ("Capture / enforcement", cap),
        ("Disk", disk_text), ("Memory", mem_text), ("CPU temperature", temp_text),
        ("Load", e(" ".join(str(x) for x in s.get("load") or []) or None)),
        ("Version", f"schoolgate {e(rec['version'])}"),
        ("Uptime", f"appliance {e(_ago(a.get('uptime_s')))}, system {e(_ago(s.get('uptime_s')))}"),
    ]) + "</table></section>"


def _bundle(rec: dict) -> str:
    b = rec.get("bundle") or {}
    if not b:
        return "<section><h2>Lists</h2><p class=\"bad\">No bundle is active.</p></section>"
    exp = b.get("expires_in_s")
    exp_cls = "bad" if exp is not None and exp < 0 else "warn" if exp is not None and exp < 3 * 86400 else "ok"
    demo = ('<p class="demo">This is the <strong>DEMO bundle</strong>: excerpts of public lists signed '
            "with public demo keys, not for real filtering. Configure <code>updates:</code> with your "
            "district's repository.</p>") if b.get("demo") else ""
    cats = "".join(f"<tr><td>{e(k)}</td><td>{e(f'{v:,}')}</td></tr>"
                   for k, v in sorted((b.get("categories") or {}).items()))
    return (f"<section><h2>Lists</h2>{demo}<table>" + _rows([
        ("Version", e(b.get("version"))), ("Created", f"{e(b.get('created'))} ({e(_ago(b.get('age_s')))} ago)"),
        ("Expires", f'<span class="{exp_cls}">{e(b.get("expires"))}</span>'),
        ("Domains", e(f"{b['domains']:,}" if isinstance(b.get("domains"), int) else None)),
    ]) + "</table>" + (f"<table><tr><th>Category</th><th>Entries</th></tr>{cats}</table>" if cats else "")
            + "</section>")


def _updates(rec: dict) -> str:
    u = rec.get("updates") or {}
    if not u.get("configured"):
        return ("<section><h2>Updates</h2><p class=\"warn\">Not configured: add <code>updates:</code> "
                "with your repository and trusted root.</p></section>")
    result = u.get("last_result")
    cls = "ok" if result in ("updated", "up-to-date", "current") else "bad" if u.get("last_error") else ""
    return "<section><h2>Updates</h2><table>" + _rows([
        ("Repository", f"<code>{e(u.get('repository'))}</code> every {e(u.get('interval_s'))} s"),
        ("Last check", f"{e(u.get('last_check'))}: <span class=\"{cls}\">{e(result)}</span>"),
        ("Last error", f'<span class="bad">{e(u["last_error"])}</span>' if u.get("last_error") else "none"),
        ("Last success", e(u.get("last_success"))), ("Next check", e(u.get("next_check"))),
    ]) + "</table></section>"


def _traffic(rec: dict, now_s: int) -> str:
    d = rec["dns"]
    if not d.get("counters_available"):
        counters = "<p class=\"warn\">Counters are not available in this process.</p>"
    else:
        ratio = d.get("cache_hit_ratio")
        counters = "<table>" + _rows([
            ("Queries", e(f"{d.get('queries') or 0:,}")), ("Per second (last minute)", e(d.get("qps"))),
            ("Blocked", e(f"{d.get('blocked') or 0:,}")),
            ("Cache hit ratio", e(f"{ratio * 100:.1f} %" if ratio is not None else None)),
            ("Forwarded", e(f"{d.get('forwarded') or 0:,}")),
            ("Rate limited", e(d.get("rate_limited"))), ("SERVFAIL", e(d.get("servfail"))),
        ]) + "</table>"
    per = d.get("blocked_by_category") or {}
    cats = "".join(f"<tr><td>{e(k)}</td><td>{e(f'{v:,}')}</td></tr>"
                   for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
    chart = history_chart(rec.get("history") or [], now_s, "Queries and blocked queries, last 24 hours")
    top = "".join(f"<tr><td class=\"name\">{e(n)}</td><td>{e(c)}</td></tr>" for n, c in rec.get("top_blocked") or [])
    return (f"<section><h2>Traffic</h2>{counters}{chart}"
            + (f"<h3>Blocked per category</h3><table>{cats}</table>" if cats else "")
            + (f"<h3>Top blocked names</h3><table>{top}</table>" if top else "<p>No blocked names yet.</p>")
            + "</section>")


def _policy(rec: dict) -> str:
    rows = "".join(
        f"<tr><td>{e(p['name'])}</td><td>{e(', '.join(p['networks']) or '—')}</td>"
        f"<td>{e(', '.join(p['block']) or 'nothing')}</td><td>{e(p['block_mode'])}</td></tr>"
        for p in rec.get("policies") or [])
    temp = "".join(f"<tr><td class=\"name\">{e(t.get('name'))}</td><td>{e(t.get('policy'))}</td>"
                   f"<td>{e(t.get('until'))}</td><td>{e(t.get('by'))}</td></tr>"
                   for t in rec.get("temporary_allows") or [])
    return ("<section><h2>Policies</h2><table><tr><th>Policy</th><th>Networks</th><th>Blocks</th>"
            f"<th>Answer</th></tr>{rows}</table>"
            + (f"<h3>Temporary allows</h3><table><tr><th>Name</th><th>Policy</th><th>Until</th><th>By</th></tr>"
               f"{temp}</table>" if temp else "") + "</section>")


def events_table(events: list[dict]) -> str:
    if not events:
        return "<p>No block events recorded.</p>"
    rows = "".join(
        f"<tr><td>{e(ev.get('ts'))}</td><td>{e(ev.get('kind'))}</td><td class=\"name\">{e(ev.get('name'))}</td>"
        f"<td>{e(', '.join(str(c) for c in ev.get('categories') or []))}</td><td>{e(ev.get('policy'))}</td>"
        f"<td>{e(ev.get('client'))}</td><td>{e(ev.get('action'))}</td></tr>" for ev in events)
    return ("<table><tr><th>Time</th><th>Kind</th><th>Name</th><th>Categories</th><th>Policy</th>"
            f"<th>Client</th><th>Action</th></tr>{rows}</table>")


def _admin(admin: dict, rec: dict) -> str:
    tok = admin["csrf"]
    pol_opts = '<option value="*">every network</option>' + "".join(
        f'<option value="{e(p["name"])}">{e(p["name"])}: {e(", ".join(p["networks"]) or "no network")}</option>'
        for p in rec.get("policies") or [])
    dur_opts = "".join(f'<option value="{e(k)}"{" selected" if k == "1h" else ""}>{e(k)}</option>'
                       for k in DURATIONS)
    reqs = []
    for r in admin.get("requests") or []:
        if r.get("decision") is None:
            action = (f'<form class="inline" method="post" action="/admin/unblock">{_csrf(tok)}'
                      f'<input type="hidden" name="id" value="{e(r["id"])}">'
                      f'<select name="decision"><option value="temporary">allow for</option>'
                      f'<option value="permanent">allow permanently</option>'
                      f'<option value="reject">reject</option></select>'
                      f'<select name="duration">{dur_opts}</select><button>Decide</button></form>')
        else:
            action = f"{e(r['decision'])} by {e(r.get('decided_by'))} {e(r.get('decided'))}"
        reqs.append(f"<tr><td>{e(r.get('ts'))}</td><td class=\"name\">{e(r.get('name'))}</td>"
                    f"<td>{e(r.get('category'))}</td><td>{e(r.get('policy'))}</td>"
                    f"<td>{e(r.get('reason'))}</td><td>{action}</td></tr>")
    req_table = ("<table><tr><th>Time</th><th>Name</th><th>Category</th><th>Policy</th><th>Reason</th>"
                 f"<th>Decision</th></tr>{''.join(reqs)}</table>") if reqs else "<p>No unblock requests.</p>"
    return (f'<section id="admin"><h2>Admin ({e(admin["user"])})</h2>'
            f'<form class="inline" method="post" action="/api/update">{_csrf(tok)}'
            f'<button id="update-now">Check for list updates now</button></form> '
            f'<form class="inline" method="post" action="/logout">{_csrf(tok)}<button>Log out</button></form>'
            f'<h3>Allow a name for a while</h3>'
            f'<form method="post" action="/api/allow" id="allow-form">{_csrf(tok)}'
            f'<label>Name <input name="name" required maxlength="253" placeholder="example.org"></label> '
            f'<label>Network <select name="policy">{pol_opts}</select></label> '
            f'<label>For <select name="duration">{dur_opts}</select></label> '
            f'<button id="allow-submit">Allow</button></form>'
            f'<h3>Unblock requests</h3>{req_table}'
            f'<h3>Recent block events</h3>{events_table(admin.get("events") or [])}'
            f'<p><a href="/admin/audit">Audit log</a> · <a href="/admin/audit.jsonl">download</a> · '
            f'<a href="/admin/events">all recent events</a></p></section>')


def status_page(rec: dict, now: datetime, admin: dict | None, flash: str | None, login_enabled: bool) -> bytes:
    b = rec.get("bundle") or {}
    head = ("<h1>schoolgate status</h1><nav><a href=\"/\">Refresh</a><a href=\"/api/status\">JSON</a>"
            "<a href=\"/metrics\">Metrics</a>"
            + ("" if admin or not login_enabled else "<a href=\"/login\">Admin login</a>") + "</nav>")
    if b.get("demo"):
        head += "<p class=\"demo\">Serving the DEMO bundle — not for real filtering.</p>"
    if b.get("how") == "unfiltered":
        head += ("<p class=\"bad\"><strong>UNFILTERED</strong>: no bundle can be opened and the config says "
                 "<code>no_bundle: forward</code>, so every name is answered without category filtering.</p>")
    elif b.get("how") == "refusing":
        head += ("<p class=\"bad\"><strong>REFUSING EVERY QUERY</strong>: no bundle can be opened and the "
                 "config says <code>no_bundle: refuse</code>.</p>")
    cc = rec.get("config_check")
    if cc and not cc.get("ok"):
        head += ("<p class=\"bad\"><strong>schoolgate.yaml on the boot partition was not taken</strong> "
                 f"({e(cc.get('summary') or 'errors below')}); the appliance runs on safe defaults.</p><ul>"
                 + "".join(f"<li><code>{e(x)}</code></li>" for x in cc.get("errors") or []) + "</ul>")
    if flash:
        head += f'<p class="flash" id="flash">{e(flash)}</p>'
    body = (head + (_admin(admin, rec) if admin else "") + "<div class=\"grid\">" + _health(rec)
            + _bundle(rec) + _updates(rec) + "</div>" + _traffic(rec, int(now.timestamp())) + _policy(rec)
            + f"<p><small>Generated {e(rec.get('time'))}</small></p>")
    return layout("schoolgate status", body)


def login_page(token: str, error: str | None, enabled: bool) -> bytes:
    if not enabled:
        body = ("<h1>Admin login</h1><p>Admin login is not configured. Set <code>web.admin_password_hash</code> "
                "(made with <code>schoolgate web hash-password</code>) and reload.</p>")
    else:
        body = ("<h1>Admin login</h1>" + (f'<p class="bad" id="login-error">{e(error)}</p>' if error else "")
                + f'<form method="post" action="/login">{_csrf(token)}'
                '<label>Password <input type="password" name="password" required autocomplete="current-password">'
                '</label> <button id="login-submit">Log in</button></form>')
    return layout("schoolgate admin login", body + '<p><a href="/">Status page</a></p>')


def message_page(title: str, text: str) -> bytes:
    return layout(title, f"<h1>{e(title)}</h1><p>{e(text)}</p><p><a href=\"/\">Back</a></p>")


def audit_page(records: list[dict]) -> bytes:
    rows = "".join(
        f"<tr><td>{e(r.get('ts'))}</td><td>{e(r.get('action'))}</td><td>{e(r.get('by'))}</td>"
        f"<td>{e(r.get('client'))}</td><td class=\"name\">"
        f"{e(', '.join(f'{k}={v}' for k, v in sorted(r.items()) if k not in ('ts', 'action', 'by', 'client')))}"
        f"</td></tr>" for r in records)
    return layout("schoolgate audit log",
                  "<h1>Audit log</h1><p><a href=\"/\">Status page</a> · <a href=\"/admin/audit.jsonl\">"
                  "download (JSON lines)</a></p><table><tr><th>Time</th><th>Action</th><th>By</th>"
                  f"<th>Client</th><th>Details</th></tr>{rows}</table>")


def events_page(events: list[dict]) -> bytes:
    return layout("schoolgate events", "<h1>Recent block events</h1><p><a href=\"/\">Status page</a></p>"
                  + events_table(events))


def block_page(info: dict, sent: bool = False, full: bool = False) -> bytes:
    """The page a blocked HTTP site shows: what, why, and the unblock-request form."""
    why = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in [
        ("Site", f'<span class="name" id="blocked-name">{e(info.get("name"))}</span>'),
        ("Category", e(", ".join(info.get("categories") or []) or None)),
        ("Rule", f'<span class="name">{e(info.get("rule"))}</span>'),
        ("List", e(", ".join(info.get("sources") or []) or None)),
        ("Policy", e(info.get("policy")))])
    if sent:
        form = "<p class=\"flash\">Your request was sent to the network's administrators.</p>"
    elif full:
        form = "<p class=\"warn\">Requests cannot be taken right now. Please ask your administrator.</p>"
    elif info.get("blocked") and info.get("name"):
        form = (f'<h2>Ask for this site to be unblocked</h2><form method="post" action="/unblock">'
                f'<input type="hidden" name="name" value="{e(info["name"])}">'
                f'<label>Why do you need it? <textarea name="reason" maxlength="500" rows="3" cols="40">'
                f'</textarea></label><br><button id="unblock-submit">Send request</button></form>')
    else:
        form = ""
    head = ("This site is blocked on this network" if info.get("blocked")
            else "This address is the network's block page")
    return layout("Blocked", f"<h1>{e(head)}</h1><table>{why}</table>{form}"
                  "<p><small>schoolgate: school network filter</small></p>")
