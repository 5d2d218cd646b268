"""The appliance's YAML config: loaded, checked against config/schema.json, turned into values.

    load.py      the whole file -> Config (every error as file:line:col), UpdatesConfig
    schema.py    config/schema.json (schema.json here links to it) run with jsonschema: keys, types,
                 enums, ranges; errors with their key path; the values that pass, for the sections
    dns.py       dns:, networks:, policies:, local lists
    log.py       log: (query log, client privacy, retention)
    flows.py     flows: (live inspection and enforcement)
    web.py       web: (status page, admin login, block page)
    values.py    the value parsers the sections share (host:port, durations, upstreams)
    passwords.py the admin password hash format (scrypt), checked here and used by the login
    defaults.py  where the shipped config/ directory, the default config and the state dir are
    reference.py docs/configuration.md generated from the schema (python -m appliance.config.reference)
"""
