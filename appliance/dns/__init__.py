"""The DNS service: listeners (UDP, TCP), the request pipeline, upstreams and the wire cache.

    service.py    one serving process: pipeline + listeners; SIGHUP reload, bundle swaps, SIGTERM
    workers.py    the supervisor of N worker processes sharing the addresses (SO_REUSEPORT)
    server.py     asyncio listeners: UDP (drains a socket per wake-up), TCP (RFC 7766)
    startup.py    "ready" means answering; the fast path's kernels compiled in a forked child
    fastpath.py   recvmmsg/sendmmsg batches answered by one jitted call (blocked and cached names)
    pipeline.py   one query -> answer bytes, a drop, or a Forward (sans-IO: time is a parameter)
    slowpath.py   dnslib for what the fast path does not handle
    upstream.py   forwarding: UDP, TCP retry on TC, validation, health and failover
    dot.py        DNS over TLS upstream connections (RFC 7858)
    cache.py      wire-format answers with TTL countdown and serve-stale (RFC 8767)
    ratelimit.py  per-client token buckets
    observe.py    a serving process's counters, query log and reports, ticked from its loop
"""
