"""Live flow inspection and enforcement inside ``schoolgate run`` (config ``flows:``).

    capture.py    the capture process: the owner's handle on it and its loop
    sources.py    the kernel's packet selection and the two packet sources (NFLOG, BPF)
    nflog.py      nfnetlink_log: bind a group, read packets with their MAC
    inspector.py  packets -> names -> decisions, counters, flows-state.json
    enforcer.py   decisions -> nftables sets and TCP resets
    nft.py        the nftables table (ruleset text, batches, the nft command)
"""
