"""The policies in force now: the config's policies with their schedules and temporary allows.

    state.py            what the policies mean at a moment; rebuilt when that changes
    temporary_allow.py  the store of temporary allows (a teacher's site for one lesson)
"""
