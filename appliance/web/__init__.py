"""The on-device web status page, admin actions, API, metrics and block page (issue 6).

    process.py   forked child of the owner process; restarted when it dies
    server.py    asyncio listeners: one request per connection, every wait bounded
    http.py      sans-IO HTTP/1.1 request parsing with named limits
    app.py       routes: status page, login, admin actions, API, metrics, block page
    auth.py      scrypt password hashes, sessions, CSRF tokens, login throttling
    audit.py     the append-only audit log and the unblock-request store
    data.py      the status record (/api/status) gathered from state files and counters
    metrics.py   Prometheus text exposition of that record
    pages.py     server-rendered HTML (every value escaped), charts.py its inline SVG
"""

from __future__ import annotations

__all__ = ["WebProcess", "start_web"]


def __getattr__(name: str):
    # Imported on first use (PEP 562): the CLI registers `schoolgate web ...` through
    # appliance.web.cli, and every other command (inspect, lookup) would otherwise pay for
    # asyncio and the config schema at start-up (~50-70 ms measured).
    if name in __all__:
        from appliance.web import process

        return getattr(process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
