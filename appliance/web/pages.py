"""Server-rendered HTML: status page, login, admin panels, audit log, block page.

Every value that reaches the markup goes through ``e()`` (html.escape with quote=True) —
names from DNS queries, unblock reasons, Host headers, list names, error texts: all of it
is attacker-controlled (Pi-hole and AdGuard Home have had XSS through crafted query names).
No script anywhere; no inline ``style=`` (the CSP forbids both); forms post to our own
routes and carry the CSRF token. The page stays well under 100 kB.

Values are formatted for people (``count``, ``plural``, ``duration``, ``nbytes``, ``when``):
no raw structure, ``None``, boolean or long float reaches the text; a field the record lacks
shows as a dash, or as "unknown" in the first-run checklist. Layout: cards in two columns, one
under 600 px; label/value lists whose labels never break inside a word; wide tables scroll
inside their card, never the page.
"""

from __future__ import annotations

import math
import numbers
from datetime import UTC, datetime
from html import escape

from appliance.web.charts import history_chart, history_series

__all__ = ["e", "STYLE", "layout", "status_page", "login_page", "block_page", "message_page",
           "audit_page", "events_page", "DURATIONS", "checklist", "upstream_rows", "upstream_state",
           "plural", "count", "duration", "nbytes", "when"]

# Temporary allow lengths offered in forms (seconds); "permanent" is 10 years.
DURATIONS = {"15m": 900, "1h": 3600, "4h": 4 * 3600, "1d": 86400, "7d": 7 * 86400}
PERMANENT_S = 3650 * 86400

STYLE = """\
:root{color-scheme:light;--fg:#1f2328;--muted:#57606a;--line:#e4e7eb;--soft:#f0f2f4;--bg:#f4f5f7;
--ok:#1a7f37;--bad:#b42318;--warn:#8a5a00;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0 auto;max-width:72rem;padding:1rem 1.25rem 2rem;color:var(--fg);background:var(--bg);
line-height:1.45;font-size:.9375rem;overflow-wrap:break-word}
h1{font-size:1.45rem;margin:0;line-height:1.2}
h2{font-size:1.05rem;margin:0 0 .5rem;padding-bottom:.35rem;border-bottom:1px solid var(--line)}
h3{font-size:.9rem;margin:1rem 0 .3rem;color:var(--muted)}
p{margin:.4rem 0}a{color:#0b57d0}body>h1{margin:.3rem 0 .8rem}dl+h2{margin-top:1rem}
h1,h2,h3,th,dt,label,.badge,.tile .l,.legend,.chart-title{word-break:keep-all;overflow-wrap:normal;hyphens:none}
code,.name,.addr{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
code{background:var(--soft);padding:.05em .3em;border-radius:4px;white-space:nowrap}
.addr,.name{overflow-wrap:anywhere}code.addr{white-space:normal}td .name{overflow-wrap:break-word}
.top{display:flex;flex-wrap:wrap;align-items:baseline;justify-content:space-between;gap:.4rem 1.5rem;
margin:.2rem 0 1rem}
nav{display:flex;flex-wrap:wrap;gap:.3rem 1.1rem}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:0 0 1rem;
min-width:0}
.cards{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:0 1rem;align-items:start}
.cards>div{min-width:0}
dl.kv{display:grid;grid-template-columns:fit-content(45%) minmax(0,1fr);margin:0}
dl.kv>div{display:contents}
dl.kv dt,dl.kv dd{margin:0;padding:.35rem 0;border-bottom:1px solid var(--soft)}
dl.kv dt{color:var(--muted);padding-right:1rem}
dl.kv>div:last-child>*{border-bottom:0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%}
th,td{padding:.35rem .5rem .35rem 0;text-align:left;border-bottom:1px solid var(--soft);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:.85rem;white-space:nowrap}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap;padding-right:0}
.ok{color:var(--ok)}.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn);font-weight:600}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:0 .55rem;border-radius:999px;font-size:.8rem;font-weight:600;
line-height:1.6;white-space:nowrap}
.badge.ok{background:#dafbe1;color:#116329}.badge.bad{background:#b42318;color:#fff}
.badge.warn{background:#fff1c2;color:#6b4500}.badge.unknown{background:#eaeef2;color:#424a53}
.banner{padding:.6rem .9rem;border-radius:8px;margin:0 0 1rem;border:1px solid}
.demo{background:#fff8c5;border-color:#d4a72c}
.alert{background:#fee4e2;border-color:#f0a8a0;color:#7a1a10}.alert ul{margin:.3rem 0 0}
.flash{background:#e8f1fe;border-color:#9cc3ef}
.checklist{border-left:4px solid #d4a72c}
.checklist ol{list-style:none;margin:.2rem 0 0;padding:0;display:grid;gap:.7rem}
.checklist li{display:flex;gap:.8rem;align-items:flex-start}
.checklist li>.badge{min-width:5.6rem;text-align:center;margin-top:.1rem}
.checklist li>div{min-width:0}.checklist li p{margin:.1rem 0 0;color:var(--muted)}
.ups{list-style:none;margin:0;padding:0}
.ups li{padding:.45rem 0;border-bottom:1px solid var(--soft)}.ups li:last-child{border-bottom:0}
.up-head{display:flex;flex-wrap:wrap;gap:.2rem .6rem;align-items:center}
.up-stats{color:var(--muted);font-size:.875rem}.up-error{color:var(--bad);font-size:.875rem}
.tiles{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:.6rem;margin:.2rem 0 1rem}
.tile{border:1px solid var(--line);border-radius:6px;padding:.45rem .7rem;background:#fafbfc;min-width:0}
.tile .l{display:block;color:var(--muted);font-size:.8rem}
.tile .v{display:block;font-size:1.35rem;font-weight:600;font-variant-numeric:tabular-nums;line-height:1.25}
.tile .s{display:block;color:var(--muted);font-size:.78rem}
.chart{margin:0 0 .5rem}
.chart figcaption{display:flex;flex-wrap:wrap;gap:.2rem 1.2rem;align-items:baseline;margin:0 0 .5rem}
.chart-title{font-weight:600;margin-right:auto}.legend{white-space:nowrap}
.key{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.35rem;vertical-align:-.05rem}
.key-q{background:#2563eb}.key-b{background:#c0392b}
.chart-body{display:grid;grid-template-columns:auto minmax(0,1fr);column-gap:.5rem}
.y-axis{display:flex;flex-direction:column;justify-content:space-between;height:calc(10rem + 1em);
margin:-.5em 0;font-size:.75rem;line-height:1;color:var(--muted);text-align:right;font-variant-numeric:tabular-nums}
.plot{display:block;width:100%;height:10rem}
.x-axis{display:flex;justify-content:space-between;font-size:.75rem;color:var(--muted);margin-top:.3rem}
.chart-note{font-size:.8rem;color:var(--muted)}
.split{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:0 2rem}
input,select,button,textarea{font:inherit;padding:.3rem;margin:.15rem 0;max-width:100%}
button{cursor:pointer}form.inline{display:inline}
meter{width:6rem;vertical-align:middle}
footer{color:var(--muted);font-size:.8rem;margin-top:.5rem}
@media (max-width:37.5rem){
body{padding:.6rem .6rem 1.5rem}
.cards,.split{grid-template-columns:minmax(0,1fr)}
section{padding:.7rem .8rem}
dl.kv{grid-template-columns:minmax(0,1fr)}
dl.kv dt{border-bottom:0;padding:.4rem 0 0;font-size:.8rem}
dl.kv dd{padding-top:0}
.tiles{grid-template-columns:repeat(2,minmax(0,1fr))}
.checklist li{display:block}.checklist li>.badge{min-width:0;margin:0 .5rem 0 0}
.checklist li>div{display:inline}.checklist li p{margin:.15rem 0 0}
.chart-title{flex-basis:100%}
}
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


# -- values for people ----------------------------------------------------------------------
# The record is JSON-shaped (numbers, strings, lists, dicts, None); nothing of it reaches the
# page raw: numbers get thousands separators and units, times read "3 min ago" (local time
# beside), unknowns a dash, and a value of the wrong type is shown as unknown, never as repr.

def _num(value: object) -> int | float | None:
    """A finite number (numpy's too), else None (bools, strings, None, NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    f = float(value)
    return f if math.isfinite(f) else None


def count(value: object) -> str:
    """1234 -> "1,234"; anything else -> "—"."""
    n = _num(value)
    return "—" if n is None else f"{round(n):,}"


def plural(n: object, one: str, many: str | None = None) -> str:
    """plural(1, "error") -> "1 error"; 2 -> "2 errors"; 1234 -> "1,234 errors"."""
    k = _num(n)
    if k is None:
        return f"— {many or one + 's'}"
    k = round(k)
    return f"{k:,} {one if k == 1 else many or one + 's'}"


def duration(seconds: object) -> str:
    """A length of time, rounded the way people say it: 45 s, 3 min, 2 h 5 min, 3 days."""
    n = _num(seconds)
    if n is None:
        return "—"
    s = int(abs(n))
    if s < 60:
        return f"{s} s"
    m = s // 60
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h" + (f" {m} min" if m and h < 6 else "")
    d, h = divmod(h, 24)
    if d < 60:
        return plural(d, "day") + (f" {h} h" if h and d < 3 else "")
    if d < 730:
        return plural(round(d / 30.44), "month")
    return plural(round(d / 365.25), "year")


def nbytes(value: object) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 77.8 GiB."""
    n = _num(value)
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def millis(value: object) -> str:
    n = _num(value)
    return "—" if n is None else f"{n:.1f} ms" if n < 10 else f"{n:,.0f} ms"


def percent(ratio: object) -> str:
    n = _num(ratio)
    return "—" if n is None else f"{n * 100:.1f} %"


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _local(t: datetime, now: datetime) -> str:
    """The appliance's local time: 14:05 today, "3 Dec, 14:05" this year, else "3 Dec 2036"."""
    lt, ln = t.astimezone(), now.astimezone()
    if lt.date() == ln.date():
        return f"{lt:%H:%M}"
    if lt.year == ln.year:
        return f"{lt.day} {lt:%b}, {lt:%H:%M}"
    return f"{lt.day} {lt:%b} {lt.year}"


def relative(t: datetime, now: datetime) -> str:
    d = (now - t).total_seconds()
    if abs(d) < 5:
        return "just now"
    return f"{duration(d)} ago" if d > 0 else f"in {duration(-d)}"


def when(value: object, now: datetime, never: str = "—") -> str:
    """HTML for a time of the record: "3 min ago (14:05)", the exact time in a tooltip."""
    t = parse_time(value)
    if t is None:
        return e(never)
    exact = t.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f'<time datetime="{e(t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))}" title="{e(exact)}">'
            f'{e(relative(t, now))}</time> <span class="muted">({e(_local(t, now))})</span>')


def _text(value: object) -> str:
    """A string of the record as text (escaped); other types are not shown raw."""
    if isinstance(value, str) and value:
        return e(value)
    n = _num(value)
    return count(n) if isinstance(n, int) else "&mdash;" if n is None else e(f"{n:,.2f}")


def _badge(cls: str, text: str) -> str:
    return f'<span class="badge {cls}">{e(text)}</span>'


def _kv(pairs: list[tuple[str, str]]) -> str:
    """Label/value pairs; the *values* are already-escaped HTML fragments."""
    return '<dl class="kv">' + "".join(f"<div><dt>{e(k)}</dt><dd>{v}</dd></div>" for k, v in pairs) + "</dl>"


def _table(head: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """A table in a horizontal scroller (a wide one scrolls, the page does not); cells are
    already-escaped HTML fragments; columns in ``numeric`` are right-aligned."""
    def cls(i: int) -> str:
        return ' class="n"' if i in numeric else ""
    return ('<div class="scroll"><table><thead><tr>' + "".join(f"<th{cls(i)}>{e(h)}</th>" for i, h in enumerate(head))
            + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
            + "</tbody></table></div>")


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">'


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _words(values: object, empty: str = "—") -> str:
    return e(", ".join(str(v) for v in _list(values) if isinstance(v, (str, int)) and not isinstance(v, bool))
             or empty)


# -- upstreams ------------------------------------------------------------------------------

def upstream_rows(d: dict) -> list[dict]:
    """The record's upstreams as rows {address, up, rtt_ms, avg_ms, queries, errors,
    last_error}: ``dns.upstream_status`` (appliance/web/data.py) when the record has it, else
    built from ``dns.upstreams`` (addresses, or dicts) and ``dns.upstream_latency_ms`` (by index)."""
    rows = [r for r in _list(d.get("upstream_status")) if isinstance(r, dict)]
    if not rows:
        lat = _dict(d.get("upstream_latency_ms"))
        for i, u in enumerate(_list(d.get("upstreams"))):
            r = dict(u) if isinstance(u, dict) else {"address": u}
            counted = _dict(lat.get(str(i)))
            for k in ("queries", "errors", "avg_ms"):
                r.setdefault(k, counted.get(k))
            rows.append(r)
    out = []
    for r in rows:
        address = r.get("address")
        out.append({"address": address if isinstance(address, str) and address else "?",
                    "up": r.get("up") if isinstance(r.get("up"), bool) else None,
                    "rtt_ms": _num(r.get("rtt_ms")), "avg_ms": _num(r.get("avg_ms")),
                    "queries": _num(r.get("queries")), "errors": _num(r.get("errors")),
                    "last_error": r.get("last_error") if isinstance(r.get("last_error"), str) else None})
    return out


def upstream_state(u: dict) -> str:
    """"up", "down" or "unknown". The live health when the record has it: down while backed
    off (``up`` false) and also once the back-off is over as long as its last try failed
    (``last_error``: cleared by an answer). Without it, what the counters show: tried and
    never answered is down, answered at least once is up."""
    if u["up"] is not None:
        return "up" if u["up"] and not u["last_error"] else "down"
    q, err = u["queries"] or 0, u["errors"] or 0
    if q > 0:
        return "down" if err >= q else "up"
    return "unknown"


def _upstream_item(u: dict) -> str:
    state = upstream_state(u)
    badge = (_badge("ok", "answering") if state == "up" else _badge("bad", "not answering") if state == "down"
             else _badge("unknown", "no queries yet" if not u["queries"] else "state unknown"))
    rtt = u["rtt_ms"] if state == "up" and u["rtt_ms"] else u["avg_ms"]
    stats = [f"rtt {millis(rtt)}"] if rtt is not None and state != "down" else []
    errors = u["errors"] or 0
    # a failed try is a query sent (the start-up probe may count the one without the other)
    stats.append(plural(max(u["queries"] or 0, errors), "query", "queries"))
    stats.append(f'<span class="{"warn" if errors else "muted"}">{e(plural(errors, "error"))}</span>'
                 if errors else e(plural(0, "error")))
    line = " · ".join(s if s.startswith("<span") else e(s) for s in stats)
    err = f'<div class="up-error">Last error: {e(u["last_error"])}</div>' if u["last_error"] else ""
    return (f'<li><div class="up-head"><span class="addr">{e(u["address"])}</span>{badge}</div>'
            f'<div class="up-stats">{line}</div>{err}</li>')


def _upstreams(rec: dict) -> str:
    d = _dict(rec.get("dns"))
    rows = upstream_rows(d)
    if not rows:
        body = ('<p class="bad">No upstream resolver is configured (<code>dns.upstreams</code> is empty): '
                "names that are not blocked get no answer.</p>")
    else:
        states = [upstream_state(u) for u in rows]
        up = states.count("up")
        summary = f"{up} of {len(rows)} answering"
        cls = "ok" if up == len(rows) else "bad" if "down" in states else "muted"
        total = _num(d.get("upstream_errors"))
        more = f" · {plural(total, 'failed try', 'failed tries')} in all" if total else ""
        body = (f'<p><span class="{cls}">{e(summary)}</span>{e(more)}</p><ul class="ups">'
                + "".join(_upstream_item(u) for u in rows) + "</ul>")
    return f'<section id="upstreams"><h2>Upstream resolvers</h2>{body}</section>'


# -- the first-run checklist ------------------------------------------------------------------

def checklist(rec: dict, login_enabled: bool | None) -> list[tuple[str, str, str, str]]:
    """(key, state, title, what to do or what is so — an HTML fragment) for each first-run
    item; state is "done", "todo" or "unknown" (the record does not say)."""
    items = []
    # 1. lists: not the demo bundle
    title = "Use your district's lists, not the demo bundle"
    b = rec.get("bundle")
    how = b.get("how") if isinstance(b, dict) else None
    if "bundle" not in rec:
        items.append(("lists", "unknown", title, "The status record does not say which bundle is served."))
    elif not isinstance(b, dict) or not b or how in ("unfiltered", "refusing") or b.get("error"):
        items.append(("lists", "todo", title,
                      "No bundle is active. Add an <code>updates:</code> section with your district's "
                      "repository and trusted root, or set <code>bundle:</code> to a bundle you built."))
    elif not isinstance(b.get("demo"), bool):
        items.append(("lists", "unknown", title, "The status record does not say whether this is the demo bundle."))
    elif b["demo"]:
        items.append(("lists", "todo", title,
                      "The appliance serves the DEMO bundle: public excerpts signed with public demo keys, "
                      "not for real filtering. Add an <code>updates:</code> section with your district's "
                      "repository and trusted root; docs/publishing.md tells how, in &ldquo;The demo bundle, and "
                      "replacing it&rdquo;."))
    else:
        items.append(("lists", "done", title, f"Serving bundle version {_text(b.get('version'))}."))
    # 2. upstreams answering
    title = "Upstream resolvers answer"
    d = rec.get("dns")
    if not isinstance(d, dict):
        items.append(("upstreams", "unknown", title, "The status record has no DNS section."))
    else:
        rows = upstream_rows(d)
        states = [upstream_state(u) for u in rows]
        down = [u["address"] for u, s in zip(rows, states, strict=True) if s == "down"]
        if not rows:
            items.append(("upstreams", "todo", title,
                          "<code>dns.upstreams</code> is empty: add the addresses of your district's or "
                          "ISP's resolvers to it, then reload."))
        elif down:
            names = ", ".join(f'<code class="addr">{e(a)}</code>' for a in down)
            items.append(("upstreams", "todo", title,
                          f"Not answering: {names}. Check that this "
                          "appliance can reach it (address, port, firewall) or set <code>dns.upstreams</code> "
                          "to resolvers it can reach, then reload."))
        elif states and all(s == "up" for s in states):
            items.append(("upstreams", "done", title, e(f"{len(rows)} of {len(rows)} answering.")))
        else:
            items.append(("upstreams", "unknown", title,
                          "No query has gone to the upstreams yet, so whether they answer is not known."))
    # 3. admin password
    title = "Admin password set"
    if login_enabled is None:
        items.append(("admin", "unknown", title, "Not known whether admin login is configured."))
    elif login_enabled:
        items.append(("admin", "done", title, "Admin login is enabled."))
    else:
        items.append(("admin", "todo", title,
                      "Run <code>schoolgate web hash-password</code>, put what it prints in "
                      "<code>web.admin_password_hash</code> of the config, then restart "
                      "<code>schoolgate run</code> or send it SIGHUP."))
    # 4. updates configured
    title = "Updates configured"
    u = rec.get("updates")
    if not isinstance(u, dict) or not isinstance(u.get("configured"), bool):
        items.append(("updates", "unknown", title, "The status record does not say whether updates are configured."))
    elif u["configured"]:
        items.append(("updates", "done", title,
                      f'Checking <code class="addr">{e(u.get("repository"))}</code> '
                      f'every {e(duration(u.get("interval_s")))}.'))
    else:
        items.append(("updates", "todo", title,
                      "Add an <code>updates:</code> section with your district's repository: "
                      "<code>repository:</code>, <code>trusted_root:</code> and <code>interval:</code>, as "
                      "docs/deployment.md shows in &ldquo;Signed updates from a district repository&rdquo;."))
    return items


_CHECK_BADGE = {"done": ("ok", "done"), "todo": ("warn", "to do"), "unknown": ("unknown", "unknown")}


def _checklist(rec: dict, login_enabled: bool | None) -> str:
    items = checklist(rec, login_enabled)
    done = sum(1 for _k, state, _t, _w in items if state == "done")
    if done == len(items):
        return ""
    lis = "".join(f'<li id="check-{k}" class="{state}">{_badge(*_CHECK_BADGE[state])}'
                  f"<div><strong>{e(t)}</strong><p>{what}</p></div></li>" for k, state, t, what in items)
    return (f'<section class="checklist" id="checklist"><h2>First-run checklist: {done} of {len(items)} done</h2>'
            f"<ol>{lis}</ol></section>")


# -- sections -------------------------------------------------------------------------------

def _capture(fl: dict | None, now: datetime) -> str:
    if fl is None:
        return "not running (no flow state)"
    mode = e(fl.get("mode") or "?")
    cap = (f'<span class="ok">{mode}</span> on {_text(fl.get("interface"))}' if fl.get("running")
           else _badge("warn", "stopped") if fl.get("enabled") else "disabled")
    if fl.get("capture"):
        cap += f" via {e(fl['capture'])}"
        if fl["capture"] == "bpf":
            cap += ' <span class="warn">(ClientHellos split over segments are not read)</span>'
    drops = _num(_dict(fl.get("counters")).get("capture_drops"))
    if drops:
        cap += f' <span class="warn">{e(plural(drops, "packet"))} dropped by the kernel</span>'
    if fl.get("error"):
        cap += f' <span class="bad">{_text(fl["error"])}</span>'
    if fl.get("updated") and fl.get("enabled"):
        cap += f' <span class="muted">· updated</span> {when(fl.get("updated"), now)}'
    return cap


def _health(rec: dict, now: datetime) -> str:
    a, d, s = _dict(rec.get("appliance")), _dict(rec.get("dns")), _dict(rec.get("system"))
    fl = _dict(rec.get("flows")).get("state")
    running = _badge("ok", "running") if a.get("running") else _badge("bad", "not running")
    workers = _num(d.get("workers"))
    listen = ", ".join(f"<span class=\"addr\">{e(x)}</span>" for x in _list(d.get("listen")) if isinstance(x, str))
    dns_line = running + (f" {e(plural(workers, 'worker'))}" if workers else "") + (
        f" · on {listen}" if listen else "")
    disk, mem = _dict(s.get("disk")), _dict(s.get("memory"))
    used = _num(disk.get("used_pct"))
    disk_text = (f'<meter min="0" max="100" high="90" value="{e(used)}"></meter> {e(f"{used:.1f} %")} used · '
                 f'{e(nbytes(disk.get("free")))} free') if used is not None else "&mdash;"
    mem_text = (f"{e(nbytes(mem.get('available')))} available of {e(nbytes(mem.get('total')))}"
                if _num(mem.get("total")) is not None else "&mdash;")
    temp = _num(s.get("cpu_temp_c"))
    temp_text = "no sensor" if temp is None else f'<span class="{"warn" if temp >= 75 else "ok"}">{temp:.1f} °C</span>'
    load = [x for x in (_num(v) for v in _list(s.get("load"))) if x is not None]
    load_text = (e(" · ".join(f"{x:.2f}" for x in load)) + ' <span class="muted">(1, 5, 15 min)</span>'
                 if load else "&mdash;")
    up_a, up_s = _num(a.get("uptime_s")), _num(s.get("uptime_s"))
    uptime = " · ".join(x for x in (f"appliance {duration(up_a)}" if up_a is not None else "",
                                    f"system {duration(up_s)}" if up_s is not None else "") if x)
    return '<section id="health"><h2>Health</h2>' + _kv([
        ("DNS", dns_line), ("Capture / enforcement", _capture(fl if isinstance(fl, dict) else None, now)),
        ("Disk", disk_text), ("Memory", mem_text), ("CPU temperature", temp_text), ("Load", load_text),
        ("Version", f"schoolgate {_text(rec.get('version'))}"), ("Uptime", e(uptime) if uptime else "&mdash;"),
    ]) + "</section>"


_HOW = {"configured": "the bundle the config names", "active": "the active signed bundle",
        "demo": "the demo bundle", "unfiltered": "none: forwarding unfiltered", "refusing": "none: refusing"}


def _bundle(rec: dict, now: datetime) -> str:
    b = _dict(rec.get("bundle"))
    if not b or b.get("how") in ("unfiltered", "refusing"):
        return '<section id="lists"><h2>Lists</h2><p class="bad">No bundle is active.</p></section>'
    if b.get("error"):
        return (f'<section id="lists"><h2>Lists</h2><p class="bad">The bundle cannot be opened: '
                f'{_text(b.get("error"))}</p></section>')
    exp = _num(b.get("expires_in_s"))
    if exp is None:
        t = parse_time(b.get("expires"))
        exp = (t - now).total_seconds() if t else None
    exp_cls = "bad" if exp is not None and exp < 0 else "warn" if exp is not None and exp < 3 * 86400 else ""
    demo = ('<p class="banner demo">This is the <strong>DEMO bundle</strong>: excerpts of public lists signed '
            "with public demo keys, not for real filtering. Configure <code>updates:</code> with your "
            "district's repository.</p>") if b.get("demo") is True else ""
    cats = [[e(k), count(v)] for k, v in sorted(_dict(b.get("categories")).items())]
    how = b.get("how")
    rows = [("Version", _text(b.get("version")))]
    if isinstance(how, str) and how in _HOW:
        rows.append(("Source", e(_HOW[how])))
    rows += [("Created", when(b.get("created"), now)),
             ("Expires", f'<span class="{exp_cls}">{when(b.get("expires"), now)}</span>' if exp_cls
              else when(b.get("expires"), now)),
             ("Domains", count(b.get("domains")))]
    return (f'<section id="lists"><h2>Lists</h2>{demo}{_kv(rows)}'
            + (f"<h3>Entries per category</h3>{_table(['Category', 'Entries'], cats, (1,))}" if cats else "")
            + "</section>")


_GOOD_RESULTS = ("updated", "up-to-date", "current")


def _updates(rec: dict, now: datetime) -> str:
    u = _dict(rec.get("updates"))
    if not u.get("configured"):
        return ('<section id="updates"><h2>Updates</h2><p class="warn">Not configured: add <code>updates:</code> '
                "with your repository and trusted root.</p></section>")
    result = u.get("last_result")
    res = (_badge("ok", result) if result in _GOOD_RESULTS else _badge("bad", result) if u.get("last_error")
           and isinstance(result, str) else _text(result) if result else "")
    last = when(u.get("last_check"), now, "never") + (f" {res}" if res and u.get("last_check") else "")
    rows = [("Repository", f'<code class="addr">{e(u.get("repository"))}</code>'),
            ("Checks", f"every {e(duration(u.get('interval_s')))}"), ("Last check", last)]
    if u.get("last_error"):
        rows.append(("Last error", f'<span class="bad">{_text(u["last_error"])}</span>'))
    rows += [("Last success", when(u.get("last_success"), now, "never")),
             ("Next check", when(u.get("next_check"), now))]
    if _num(u.get("active_version")) is not None:
        rows.append(("Active version", count(u.get("active_version"))))
    return f'<section id="updates"><h2>Updates</h2>{_kv(rows)}</section>'


def _tile(label: str, value: str, sub: str = "", ident: str = "") -> str:
    """A counter: the label, the value (big) and a line under it; all already escaped."""
    i = f' id="{ident}"' if ident else ""
    return (f'<div class="tile"><span class="l">{label}</span><span class="v"{i}>{value}</span>'
            + (f'<span class="s">{sub}</span>' if sub else "") + "</div>")


def _traffic(rec: dict, now: datetime) -> str:
    d = _dict(rec.get("dns"))
    series = history_series(_list(rec.get("history")), int(now.timestamp()))
    if not d.get("counters_available"):
        counters = '<p class="warn">Counters are not available in this process.</p>'
    else:
        q, bl = _num(d.get("queries")) or 0, _num(d.get("blocked")) or 0
        since = parse_time(d.get("counting_since"))
        since_text = f"since {e(_local(since, now))}" if since else "since the counters started"
        counters = '<div class="tiles">' + "".join([
            _tile("Queries", e(count(q)), since_text, "count-queries"),
            _tile("Blocked", e(count(bl)), e(f"{bl / q * 100:.1f} % of queries") if q else "", "count-blocked"),
            _tile("Last 24 hours", e(count(series.total_queries)),
                  e(f"{series.total_blocked:,} blocked"), "count-24h"),
            _tile("Per second", e(f"{_num(d.get('qps')):,.2f}" if _num(d.get("qps")) is not None else "—"),
                  "last minute", "count-qps"),
            _tile("Cache hits", e(percent(d.get("cache_hit_ratio"))),
                  e(plural(_num(d.get("cache_hits")) or 0, "answer")) + " from cache"),
            _tile("Forwarded", e(count(d.get("forwarded") or 0)), "to upstreams"),
            _tile("SERVFAIL", e(count(d.get("servfail") or 0)), "answers"),
            _tile("Rate limited", e(count(d.get("rate_limited") or 0)), "queries"),
        ]) + "</div>"
    chart = history_chart(series, "Last 24 hours")
    per = [(str(k), _num(v)) for k, v in _dict(d.get("blocked_by_category")).items()]
    cats = [[e(k), count(v)] for k, v in sorted(per, key=lambda kv: -(kv[1] or 0))]
    top = [[f'<span class="name">{e(r[0])}</span>', count(r[1])] for r in _list(rec.get("top_blocked"))
           if isinstance(r, list | tuple) and len(r) == 2]
    lists = ('<div class="split"><div><h3>Blocked per category</h3>'
             + (_table(["Category", "Blocked"], cats, (1,)) if cats else "<p>Nothing blocked yet.</p>")
             + "</div><div><h3>Top blocked names</h3>"
             + (_table(["Name", "Blocked"], top, (1,)) if top else "<p>No blocked names yet.</p>") + "</div></div>")
    return f'<section id="traffic"><h2>Traffic</h2>{counters}{chart}{lists}</section>'


def _missing(names: object) -> str:
    """A degraded policy: the categories it names that the bundle served lacks."""
    got = [str(n) for n in _list(names)]
    if not got:
        return ""
    return (f' <span class="badge bad">degraded</span> <span class="muted">{e(", ".join(got))} not in the '
            "bundle served: blocked once a bundle brings them</span>")


def _policy(rec: dict, now: datetime) -> str:
    rows = [[e(p.get("name")), _words(p.get("networks")),
             _words(p.get("block"), "nothing") + _missing(p.get("missing")), _text(p.get("block_mode"))]
            for p in _list(rec.get("policies")) if isinstance(p, dict)]
    temp = [[f'<span class="name">{e(t.get("name"))}</span>', _text(t.get("policy")), when(t.get("until"), now),
             _text(t.get("by"))] for t in _list(rec.get("temporary_allows")) if isinstance(t, dict)]
    return ('<section id="policies"><h2>Policies</h2>' + _table(["Policy", "Networks", "Blocks", "Answer"], rows)
            + (f"<h3>Temporary allows</h3>{_table(['Name', 'Policy', 'Until', 'By'], temp)}" if temp else "")
            + "</section>")


def events_table(events: list[dict], now: datetime | None = None) -> str:
    if not events:
        return "<p>No block events recorded.</p>"
    now = now or datetime.now(UTC)
    rows = [[when(ev.get("ts"), now), _text(ev.get("kind")), f'<span class="name">{e(ev.get("name"))}</span>',
             _words(ev.get("categories")), _text(ev.get("policy")), _text(ev.get("client")), _text(ev.get("action"))]
            for ev in events]
    return _table(["Time", "Kind", "Name", "Categories", "Policy", "Client", "Action"], rows)


def _admin(admin: dict, rec: dict, now: datetime) -> str:
    tok = admin["csrf"]
    pol_opts = '<option value="*">every network</option>' + "".join(
        f'<option value="{e(p["name"])}">{e(p["name"])}: {_words(p.get("networks"), "no network")}</option>'
        for p in _list(rec.get("policies")) if isinstance(p, dict))
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
            action = f"{e(r['decision'])} by {e(r.get('decided_by'))} {when(r.get('decided'), now)}"
        reqs.append([when(r.get("ts"), now), f'<span class="name">{e(r.get("name"))}</span>',
                     _text(r.get("category")), _text(r.get("policy")), e(r.get("reason")), action])
    req_table = (_table(["Time", "Name", "Category", "Policy", "Reason", "Decision"], reqs) if reqs
                 else "<p>No unblock requests.</p>")
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
            f'<h3>Recent block events</h3>{events_table(admin.get("events") or [], now)}'
            f'<p><a href="/admin/audit">Audit log</a> · <a href="/admin/audit.jsonl">download</a> · '
            f'<a href="/admin/events">all recent events</a></p></section>')


def status_page(rec: dict, now: datetime, admin: dict | None, flash: str | None, login_enabled: bool) -> bytes:
    b = _dict(rec.get("bundle"))
    head = ('<header class="top"><h1>schoolgate status</h1><nav><a href="/">Refresh</a>'
            '<a href="/api/status">JSON</a><a href="/metrics">Metrics</a>'
            + ("" if admin or not login_enabled else '<a href="/login">Admin login</a>') + "</nav></header>")
    if flash:
        head += f'<p class="banner flash" id="flash">{e(flash)}</p>'
    if b.get("demo") is True:
        head += ('<p class="banner demo" id="demo-banner">Serving the <strong>DEMO bundle</strong> — '
                 "not for real filtering.</p>")
    if b.get("how") == "unfiltered":
        head += ('<p class="banner alert"><strong>UNFILTERED</strong>: no bundle can be opened and the config says '
                 "<code>no_bundle: forward</code>, so every name is answered without category filtering.</p>")
    elif b.get("how") == "refusing":
        head += ('<p class="banner alert"><strong>REFUSING EVERY QUERY</strong>: no bundle can be opened and the '
                 "config says <code>no_bundle: refuse</code>.</p>")
    cc = rec.get("config_check")
    if isinstance(cc, dict) and not cc.get("ok"):
        head += ('<div class="banner alert"><p><strong>schoolgate.yaml on the boot partition was not taken</strong> '
                 f"({e(cc.get('summary') or 'errors below')}); the appliance runs on safe defaults.</p><ul>"
                 + "".join(f"<li><code>{e(x)}</code></li>" for x in _list(cc.get("errors"))) + "</ul></div>")
    generated = parse_time(rec.get("time")) or now
    body = (head + _checklist(rec, login_enabled) + (_admin(admin, rec, now) if admin else "")
            + f'<div class="cards"><div>{_health(rec, now)}{_upstreams(rec)}</div>'
            f"<div>{_bundle(rec, now)}{_updates(rec, now)}</div></div>" + _traffic(rec, now) + _policy(rec, now)
            + f'<footer>Generated {e(_local(generated, now))} ({e(generated.astimezone().strftime("%Z"))}, '
            "the appliance's local time).</footer>")
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


def audit_page(records: list[dict], now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC)
    rows = [[when(r.get("ts"), now), e(r.get("action")), e(r.get("by")), e(r.get("client")),
             '<span class="name">' + e(", ".join(f"{k}={v}" for k, v in sorted(r.items())
                                                 if k not in ("ts", "action", "by", "client"))) + "</span>"]
            for r in records]
    return layout("schoolgate audit log",
                  "<h1>Audit log</h1><p><a href=\"/\">Status page</a> · <a href=\"/admin/audit.jsonl\">"
                  "download (JSON lines)</a></p><section>"
                  + _table(["Time", "Action", "By", "Client", "Details"], rows) + "</section>")


def events_page(events: list[dict]) -> bytes:
    return layout("schoolgate events", "<h1>Recent block events</h1><p><a href=\"/\">Status page</a></p>"
                  "<section>" + events_table(events) + "</section>")


def block_page(info: dict, sent: bool = False, full: bool = False) -> bytes:
    """The page a blocked HTTP site shows: what, why, and the unblock-request form."""
    why = _kv([
        ("Site", f'<span class="name" id="blocked-name">{e(info.get("name"))}</span>'),
        ("Category", e(", ".join(info.get("categories") or []) or None)),
        ("Rule", f'<span class="name">{e(info.get("rule"))}</span>'),
        ("List", e(", ".join(info.get("sources") or []) or None)),
        ("Policy", e(info.get("policy")))])
    if sent:
        form = "<p class=\"banner flash\">Your request was sent to the network's administrators.</p>"
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
    return layout("Blocked", f"<h1>{e(head)}</h1><section>{why}{form}</section>"
                  "<p><small>schoolgate: school network filter</small></p>")
