"""What the appliance tells about itself: counters, the query log, status, JSON logs.

    stats.py     counters shared by every process (one anonymous shared mmap)
    querylog.py  the JSON-lines log of blocked queries, client privacy, retention
    status.py    counters.json and `schoolgate status`'s record
    jsonlog.py   JSON-lines logging to stderr
    holders.py   who holds an address `run` cannot listen on (/proc/net, /proc/PID/fd)
"""
