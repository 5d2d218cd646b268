#!/usr/bin/env bash
# The whole test set-up on a fresh machine (the README's second set-up command, and what
# .ci/run does through the README's second command):
#   1. as root with apt-get: the system tools the tests use (a failed install is fatal:
#      CI must not turn the tests needing them into skips);
#      otherwise: a list of what is missing (those tests skip, naming the tool);
#   2. .venv, created if missing;
#   3. the project in it, editable, with the test and dev extras (pytest, hypothesis, ...,
#      mypy, ruff, pytest-xdist).
# Safe to run again: installed packages are not fetched twice.
set -euo pipefail
cd "$(dirname "$0")/.."

# package:command it provides (the command is what the tests look for with shutil.which).
#   dig (dnsutils), kdig (knot-dnsutils) and dnsmasq: the DNS service's integration tests;
#   dnsperf and unbound: the load tests and benchmarks/dns.py, unbound also the DoT upstream;
#   tshark (the oracle for `schoolgate inspect`'s names), tcpdump and curl: the live-capture
#   and flow tests; nftables and iproute2: flow enforcement in network namespaces;
#   chromium: the web page's browser test (Playwright drives the system browser, no
#   `playwright install`); faketime: the gateway test bed under a shifted clock;
#   prometheus: promtool checks /metrics; stress-ng: loads the machine (CI's load runs);
#   nsd and bind9-utils (dnssec-keygen, dnssec-signzone): the DNSSEC forwarding tests (a signed
#   zone served by NSD; delv comes with dnsutils).
tools="python3-venv: dnsutils:dig knot-dnsutils:kdig dnsmasq:dnsmasq dnsperf:dnsperf unbound:unbound
tshark:tshark tcpdump:tcpdump curl:curl nftables:nft iproute2:ip chromium:chromium faketime:faketime
prometheus:promtool stress-ng:stress-ng nsd:nsd bind9-utils:dnssec-signzone"

installed() {  # a Debian package, installed
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=""
    for t in $tools; do
        installed "${t%%:*}" || missing="$missing ${t%%:*}"
    done
    if [ -n "$missing" ]; then
        export DEBIAN_FRONTEND=noninteractive
        # Installing dnsmasq, unbound or prometheus must not start a system service (one would
        # grab port 53); an existing policy-rc.d is left alone.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        # wireshark-common asks whether non-root users may capture; answer before it asks.
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        echo "+ apt-get install$missing" >&2
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
else
    absent=""
    for t in $tools; do
        cmd=${t#*:}
        if [ -n "$cmd" ]; then
            command -v "$cmd" >/dev/null || absent="$absent ${t%%:*}($cmd)"
        fi
    done
    if [ -n "$absent" ]; then
        echo "tests/setup.sh: not root or no apt-get: not installing system tools; missing:$absent" >&2
        echo "tests/setup.sh: the tests needing them skip, naming the tool" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'
# The DNS kernels into numba's cache (next to the sources), as an install would: the tests
# then start services as a box does after its first start (tests/integration/test_startup.py
# covers the first start itself, with a cache of its own). A throwaway state directory.
warm_state=$(mktemp -d)
XDG_STATE_HOME=$warm_state SCHOOLGATE_RESOLV_CONF=/dev/null .venv/bin/schoolgate warm-up
rm -rf "$warm_state"
