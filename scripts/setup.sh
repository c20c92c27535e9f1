#!/usr/bin/env bash
# Idempotent set-up of the chainlb testbed on Debian 12 (quick once done):
#   1. Debian packages (installed only when missing),
#   2. the Open vSwitch daemons (userspace datapath; started when not running),
#   3. .venv from Debian's python3 (--system-site-packages, so Mininet imports)
#      holding the pinned Python dependencies of pyproject.toml,
#   4. the in-kernel fast path (agents/fastpath.bpf.c -> build/fastpath.bpf.o) with Debian's
#      clang and libbpf headers, and the first packet's compiled helpers (agents/native.c ->
#      build/_chainlb_native*.so) with clang and the Python headers (each rebuilt when its
#      source is newer).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.chainlb-deps"
SYS_PY=/usr/bin/python3
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
PACKAGES=(mininet openvswitch-switch iperf3 ethtool nftables conntrack iputils-ping
          tcpdump iproute2 python3-venv python3-dev tmux procps nginx-light curl clang libbpf-dev libbpf1
          bpftool)
POLICY_RC=/usr/sbin/policy-rc.d

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
run() { "$@" || die "command failed (exit $?): $*"; }

check_platform() {
    [[ "$(uname -s)" == Linux ]] || die "this testbed needs Linux (Mininet, network namespaces); found $(uname -s). Use a Debian 12 machine or VM."
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (Mininet, OVS and apt need it): run it with sudo: sudo make setup"
    command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
        || die "needs a Debian-based system with apt-get and dpkg-query (tested on Debian 12)"
}

install_packages() {
    local missing=() pkg status
    for pkg in "${PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        say "Debian packages: all present"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    run apt-get update -q
    # Installing nginx would start its service on port 80 (invoke-rc.d, deb-systemd-invoke):
    # a policy-rc.d answering 101 (action forbidden) prevents that; ours is removed afterwards,
    # also on failure (trap), and one that was there before is left alone. The testbed runs
    # its own nginx processes inside the hosts (agents/apps.py nginx).
    local nginx_before own_policy=0
    nginx_before="$(dpkg-query -W -f='${Status}' nginx 2>/dev/null || true)"
    if [[ ! -e "$POLICY_RC" ]]; then
        trap 'rm -f "$POLICY_RC"' EXIT
        own_policy=1
        printf '#!/bin/sh\n# chainlb setup.sh: no service starts during apt-get install\nexit 101\n' \
            > "$POLICY_RC" && chmod 755 "$POLICY_RC" || die "cannot write $POLICY_RC"
    fi
    run apt-get install -y -q --no-install-recommends "${missing[@]}"
    if ((own_policy)); then
        rm -f "$POLICY_RC"
        trap - EXIT
    fi
    # nor at boot (the package enables the unit), when this run installed nginx
    if [[ "$nginx_before" != "install ok installed" ]] && command -v systemctl >/dev/null; then
        systemctl disable --quiet nginx.service >/dev/null 2>&1 || true
    fi
}

ovs_answers() { ovs-vsctl --timeout=5 show >/dev/null 2>&1; }

start_ovs() {
    if ovs_answers; then
        say "Open vSwitch: running"
        return
    fi
    [[ -x "$OVS_CTL" ]] || die "$OVS_CTL not found: is openvswitch-switch installed?"
    say "starting Open vSwitch daemons"
    run "$OVS_CTL" start --system-id=random
    local i
    for i in $(seq 1 50); do
        ovs_answers && { say "Open vSwitch: running"; return; }
        sleep 0.1
    done
    die "ovs-vsctl does not answer after '$OVS_CTL start'; see /var/log/openvswitch/"
}

make_venv() {
    [[ -x "$SYS_PY" ]] || die "$SYS_PY not found: install python3 (Debian's)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating $VENV"
        run "$SYS_PY" -m venv --system-site-packages "$VENV"
    fi
    if [[ -f "$STAMP" && "$STAMP" -nt "$REPO/pyproject.toml" ]]; then
        say "Python dependencies: up to date"
        return
    fi
    local deps
    deps="$("$VENV/bin/python" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
)" || die "cannot read the dependencies from $REPO/pyproject.toml"
    say "installing Python dependencies: $(echo $deps)"
    # shellcheck disable=SC2086
    run "$VENV/bin/python" -m pip install -q --disable-pip-version-check $deps
    run "$VENV/bin/python" -c "import mininet.net, os_ken, scapy, pandas, pytest"
    run touch "$STAMP"
}

build_fastpath() {
    local src="$REPO/agents/fastpath.bpf.c" obj="$REPO/build/fastpath.bpf.o"
    if [[ -f "$obj" && "$obj" -nt "$src" ]]; then
        say "XDP fast path: built"
        return
    fi
    say "building the XDP fast path ($obj)"
    run mkdir -p "$REPO/build"
    run clang -O2 -g -Wall -target bpf -I"/usr/include/$(uname -m)-linux-gnu" \
        -c "$src" -o "$obj.tmp"
    run mv "$obj.tmp" "$obj"
}

build_native() {
    local src="$REPO/agents/native.c" so
    so="$("$VENV/bin/python" -c 'from agents.native import PATH; print(PATH)')" \
        || die "cannot tell where agents/native.c's module goes"
    if [[ -f "$so" && "$so" -nt "$src" ]]; then
        say "first-packet helpers: built"
        return
    fi
    say "building the first-packet helpers ($so)"
    local inc
    inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [[ -f "$inc/Python.h" ]] || die "$inc/Python.h missing: install python3-dev"
    run mkdir -p "$REPO/build"
    run clang -O2 -g -Wall -Werror -fPIC -shared -I"$inc" "$src" -o "$so.tmp"
    run mv "$so.tmp" "$so"
}

check_platform
install_packages
start_ovs
make_venv
build_fastpath
(cd "$REPO" && build_native)
say "done"
