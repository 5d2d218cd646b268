"""The policies in force now: the config's policies with their schedules and temporary allows.

    state.py            what the policies mean at a moment; rebuilt when that changes
    categories.py       policies naming categories the bundle lacks: warning, error or degraded
    temporary_allow.py  the store of temporary allows (a teacher's site for one lesson)
"""
