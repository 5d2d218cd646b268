"""The DNS service: listeners (UDP, TCP), the request pipeline, upstreams and the wire cache.

    server.py     asyncio listeners: UDP (drains a socket per wake-up), TCP (RFC 7766)
    pipeline.py   one query -> answer bytes, a drop, or a Forward (sans-IO: time is a parameter)
    slowpath.py   dnslib for what the fast path does not handle
    upstream.py   forwarding: UDP, TCP retry on TC, validation, health and failover
    cache.py      wire-format answers with TTL countdown and serve-stale (RFC 8767)
    ratelimit.py  per-client token buckets
    service.py    config -> running service; SIGHUP reload, SIGTERM
"""
