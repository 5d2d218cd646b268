"""The on-device web status page, admin actions, API, metrics and block page.

    process.py   forked child of the owner process; restarted when it dies
    server.py    asyncio listeners: one request per connection, every wait bounded
    http.py      sans-IO HTTP/1.1 requests (parsed by h11) with named limits
    app.py       routes: status page, login, admin actions, API, metrics, block page
    auth.py      password checks, sessions, CSRF tokens, login throttling
    audit.py     the append-only audit log and the unblock-request store
    data.py      the status record (/api/status) gathered from state files and counters
    metrics.py   that record as Prometheus metrics (a prometheus_client collector)
    pages.py     server-rendered HTML (every value escaped), charts.py its inline SVG
    cli.py       `schoolgate web hash-password`
"""
