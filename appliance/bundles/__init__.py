"""Which bundle the appliance serves, and what it falls back on.

    served.py    a config built against its bundle (Built) and how serving processes rebuild
    select.py    the config's bundle, else the active signed one, else the signed demo bundle
    fallback.py  what ``no_bundle:`` says to do when nothing opens
    demo.py      rebuilds the signed demo repository shipped in config/demo
"""
