"""The config's ``flows:`` section: live flow inspection and nftables enforcement.

```yaml
flows:
  enabled: true
  interface: eth1          # the LAN side: where clients' packets come in
  mode: enforce            # enforce | monitor (count and log only, no nftables rules)
  block_quic: false        # drop UDP 443 from the LAN so browsers fall back to TCP (SNI visible)
  block_dot: true          # refuse DNS over TLS/QUIC (TCP/UDP 853)
  block_doh_addresses: true  # drop the bundle's "doh" CIDRs for every client
  flow_timeout: 2m         # how long a blocked flow stays in nftables' set
  max_flows: 16384         # flow directions tracked at once by the inspector
  capture: auto            # auto | nflog | bpf: how flow-opening packets reach the inspector
  nflog_group: 2375        # the nfnetlink_log group the table's log rules use (nflog)
```
Loaded by appliance.config.load_config; every problem is appended to its error list with
the value's file:line:col. Limits name their reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from filters.errors import ConfigError
from signatures.yamldoc import YamlDoc

__all__ = ["FlowsConfig", "parse_flows", "MODES", "CAPTURES", "DEFAULT_FLOW_TIMEOUT", "MAX_FLOW_TIMEOUT",
           "DEFAULT_MAX_FLOWS", "MAX_MAX_FLOWS", "DEFAULT_NFLOG_GROUP"]

MODES = ("enforce", "monitor")
# nflog: nftables logs each flow's first packets (every segment of a split ClientHello) to
# a netlink group; bpf: a kernel filter on the interface passes packets that *start* a
# flow's first message (a ClientHello's first segment only); auto: nflog when the group can
# be bound and the log rules load, else bpf with a warning (appliance/flows.py).
CAPTURES = ("auto", "nflog", "bpf")
_KEYS = {"enabled", "interface", "mode", "block_quic", "block_dot", "block_doh_addresses",
         "flow_timeout", "max_flows", "capture", "nflog_group"}
# An nfnetlink_log group (a 16-bit number, nftables ``log group``) per network namespace is
# bound by one socket only; ulogd and examples use the low numbers, so ours is out of the way.
DEFAULT_NFLOG_GROUP = 2375
# A blocked connection's 5-tuple stays in the nftables set this long: longer than TCP's
# retransmission of a lost RST's trigger (~1 min of SYN/data retries) and a QUIC idle timeout
# (30 s in browsers); a reused 5-tuple after that is a new connection and is inspected anew.
DEFAULT_FLOW_TIMEOUT, MAX_FLOW_TIMEOUT = 120, 86400
# filters/flow_table.MAX_FLOWS: 16,384 directions bound the worst case below 1 GiB; at most
# 1 M (the nftables set size cap below is the same) for big sites with big boxes.
DEFAULT_MAX_FLOWS, MAX_MAX_FLOWS = 16384, 1 << 20
# Linux interface names: IFNAMSIZ 16 with the NUL, no '/' or whitespace (dev_valid_name).
_IFNAME = re.compile(r"[^/\s:]{1,15}")
_DURATION = re.compile(r"([0-9]+)\s*(s|m|h|d)?")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class FlowsConfig:
    enabled: bool = False
    interface: str | None = None
    mode: str = "enforce"
    block_quic: bool = False
    block_dot: bool = True
    block_doh_addresses: bool = True
    flow_timeout: int = DEFAULT_FLOW_TIMEOUT  # seconds
    max_flows: int = DEFAULT_MAX_FLOWS
    capture: str = "auto"
    nflog_group: int = DEFAULT_NFLOG_GROUP


def parse_flows(doc: YamlDoc, d: dict, errors: list[ConfigError]) -> FlowsConfig:
    """The ``flows:`` section (defaults for what is missing; disabled when absent)."""
    s = d.get("flows")
    if s is None:
        return FlowsConfig()
    if not isinstance(s, dict):
        errors.append(doc.error("flows must be a mapping (enabled, interface, mode, ...)", "flows"))
        return FlowsConfig()
    for k in s:
        if k not in _KEYS:
            errors.append(doc.key_error(f"unknown key flows.{k} (known: {', '.join(sorted(_KEYS))})", "flows", k))
    got: dict = {}
    for key in ("enabled", "block_quic", "block_dot", "block_doh_addresses"):
        if key in s:
            if not isinstance(s[key], bool):
                errors.append(doc.error(f"flows.{key} must be true or false", "flows", key))
            else:
                got[key] = s[key]
    if "interface" in s:
        v = s["interface"]
        if not isinstance(v, str) or not _IFNAME.fullmatch(v) or v in (".", ".."):
            errors.append(doc.error("flows.interface must be a network interface name (1-15 characters, "
                                    "no '/', ':' or spaces), e.g. eth1", "flows", "interface"))
        else:
            got["interface"] = v
    if "mode" in s:
        if s["mode"] not in MODES:
            errors.append(doc.error(f"flows.mode must be one of {', '.join(MODES)}", "flows", "mode"))
        else:
            got["mode"] = s["mode"]
    if "capture" in s:
        if s["capture"] not in CAPTURES:
            errors.append(doc.error(f"flows.capture must be one of {', '.join(CAPTURES)}", "flows", "capture"))
        else:
            got["capture"] = s["capture"]
    if "nflog_group" in s:
        v = s["nflog_group"]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFF:
            errors.append(doc.error("flows.nflog_group must be a whole number from 0 to 65535", "flows",
                                    "nflog_group"))
        else:
            got["nflog_group"] = v
    if "flow_timeout" in s:
        v = s["flow_timeout"]
        m = _DURATION.fullmatch(v.strip()) if isinstance(v, str) else None
        secs = (v if isinstance(v, int) and not isinstance(v, bool)
                else int(m.group(1)) * _UNITS[m.group(2)] if m else None)
        if secs is None or not 1 <= secs <= MAX_FLOW_TIMEOUT:
            errors.append(doc.error(f"flows.flow_timeout must be a duration from 1 s to {MAX_FLOW_TIMEOUT // 3600} h "
                                    "(e.g. 90s, 2m)", "flows", "flow_timeout"))
        else:
            got["flow_timeout"] = secs
    if "max_flows" in s:
        v = s["max_flows"]
        if not isinstance(v, int) or isinstance(v, bool) or not 16 <= v <= MAX_MAX_FLOWS:
            errors.append(doc.error(f"flows.max_flows must be a whole number from 16 to {MAX_MAX_FLOWS}",
                                    "flows", "max_flows"))
        else:
            got["max_flows"] = v
    if got.get("enabled") and "interface" not in got and "interface" not in s:
        errors.append(doc.error("flows.enabled needs flows.interface (the LAN interface to watch)", "flows"))
    return FlowsConfig(**got)
