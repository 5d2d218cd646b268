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
The keys, their values, ranges and meaning (the capture modes: appliance/flows/capture.py)
are declared in config/schema.json; loaded by appliance.config.load.load_config once the
schema has passed, so what is left here is the one rule across keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config.schema import ConfigDoc
from filters.errors import ConfigError

__all__ = ["FlowsConfig", "parse_flows", "DEFAULT_FLOW_TIMEOUT", "DEFAULT_MAX_FLOWS", "DEFAULT_NFLOG_GROUP"]

# An nfnetlink_log group (a 16-bit number, nftables ``log group``) per network namespace is
# bound by one socket only; ulogd and examples use the low numbers, so ours is out of the way.
DEFAULT_NFLOG_GROUP = 2375
# A blocked connection's 5-tuple stays in the nftables set this long: longer than TCP's
# retransmission of a lost RST's trigger (~1 min of SYN/data retries) and a QUIC idle timeout
# (30 s in browsers); a reused 5-tuple after that is a new connection and is inspected anew.
DEFAULT_FLOW_TIMEOUT = 120
# filters/flow_table.MAX_FLOWS: 16,384 directions bound the worst case below 1 GiB; the
# schema allows up to 1 M (the nftables set size cap is the same) for big sites with big
# boxes. Interface names follow Linux's dev_valid_name (IFNAMSIZ 16 with the NUL, no '/').
DEFAULT_MAX_FLOWS = 16384


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


def parse_flows(doc: ConfigDoc, d: dict, errors: list[ConfigError]) -> FlowsConfig:
    """The ``flows:`` section (defaults for what is missing; disabled when absent)."""
    s = d.get("flows")
    if s is None:
        return FlowsConfig()
    got = {k: s[k] for k in ("enabled", "interface", "mode", "block_quic", "block_dot", "block_doh_addresses",
                             "max_flows", "capture", "nflog_group") if k in s}
    secs = doc.duration(s["flow_timeout"], errors, "flows", "flow_timeout") if "flow_timeout" in s else None
    if secs is not None:
        got["flow_timeout"] = int(secs)
    if got.get("enabled") and not doc.given("flows", "interface"):
        errors.append(doc.error("needs flows.interface (the LAN interface to watch)", "flows", "enabled"))
    return FlowsConfig(**got)
