"""Signed bundle updates on the appliance (python-tuf's ngclient underneath).

    state.py      the state directory's layout: bundles/current, update-state.json, run.json
    fetcher.py    HTTP(S) and file:// downloads with byte caps and deadlines
    updater.py    one update: refresh, verify, unpack, activate, prune
    scheduler.py  update checks at the configured interval, in a child process
"""
