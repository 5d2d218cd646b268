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
