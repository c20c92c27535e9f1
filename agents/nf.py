"""The NF: a real stateful firewall (nftables + conntrack) inside an NF host's network namespace.

The NF host has one interface to the gateway. Packets reach it because an LB agent rewrote their
destination MAC to the NF's; the NF routes them (``ip_forward``) out of the same interface to the
real destination, which is on-link in 10.0.0.0/16. ICMP redirects are off so that the hosts keep
sending through the LB path, and ``nf_conntrack_tcp_loose=0`` so that conntrack never picks up a
TCP connection in the middle: a connection moved to this NF mid-flight is ``ct state invalid``
and dropped, which is the real break the testbed measures. Conntrack's timeouts come from
``agents.conntrack.CtTimeouts`` (kernel defaults unless ``--ct-timeouts`` changes some), the one
owner the LB nodes' idle timeouts are derived from too; ``start`` writes every one of them.

Forward chain of table ``inet chainlb_nf`` (see :func:`ruleset`), counting before any verdict
(that is the per-connection ground truth, accepted or not), after the controller's health
probes (``ryu_apps.probe``), which pass uncounted:

1. every forwarded IPv4 packet but an ICMP error updates the in-kernel dynamic set ``@flows``
   (per-element counter) keyed on ``saddr . daddr . l4proto . sport . dport`` (ports 0 for
   non-TCP/UDP, e.g. ICMP echo);
2. an ICMP error (destination-unreachable, source-quench, redirect, time-exceeded,
   parameter-problem) is counted instead in ``@related_flows``, keyed on the header of the packet
   it is about (the inner saddr, daddr, protocol and ports, read as raw payload relative to the
   transport header, inner IHL 5 assumed; ports 0 when the inner packet is not TCP/UDP), that is
   the connection it belongs to, in that packet's direction. nft 1.0.6 takes raw payload only in
   a set declared ``typeof`` the same expressions, and prints such a set back only with at most
   four of them, so both ports are one 32-bit field there (``sport << 16 | dport``). An ICMP
   error too short to hold the inner header is not counted in any set;
3. ``ct state established,related accept``;
4. ``ct state invalid``: also counted per flow in ``@invalid_flows`` (not ICMP errors: an error no
   connection here claims, e.g. one that reached another NF than its connection's, is counted in
   ``@related_flows`` and the ``invalid`` counter only), then the named counter ``invalid`` and
   drop;
5. ``tcp flags & (syn|ack|fin|rst) == syn ct state new accept``; new ICMP and UDP accepted;
6. everything else: named counter ``dropped`` and drop (chain policy drop).

Usage (as root, inside the NF's netns; Mininet's ``host.cmd`` runs it there)::

    python -m agents.nf start --name nf1 [--max-flows N] [--ct-timeouts tcp_established=600,udp=20]
    python -m agents.nf dump  --name nf1 [--out FILE.json]    (stdout without --out)
    python -m agents.nf stop

``start`` configures the kernel and exits (no daemon): the NF is the kernel itself.
``dump`` writes ``{"nf", "flows": [{"src","dst","proto","sport","dport","packets","bytes",
"invalid"}], "related": [{"src","dst","proto","sport","dport","packets","bytes"}], "invalid",
"dropped", "max_flows", "set_full", "dumped_at"}``; one flow entry per direction as seen by the
NF; one related entry per inner tuple (as the original packet had it: ``src`` is that packet's
sender, not the ICMP error's); ``set_full`` when ``@flows`` or ``@related_flows`` is full.
``stop`` turns forwarding off, then removes the table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from agents.conntrack import ICMP_ERRORS, CtTimeouts, parse_timeouts
from ryu_apps.probe import PROBE_DST, PROBE_PORT, PROBE_SRC

TABLE = "chainlb_nf"
FAMILY = "inet"
DEFAULT_MAX_FLOWS = 262144
SYSCTL_ROOT = Path("/proc/sys")
INIT_NETNS_INO = 0xEFFFFFF9      # PROC_NET_INIT_INO: the inode of the machine's own netns


class NFError(Exception):
    """A user-facing failure of an NF command (message printed without traceback)."""


# --- ruleset -----------------------------------------------------------------------------

_FLOW_TYPE = "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service"
_KEY_PORTS = "ip saddr . ip daddr . meta l4proto . th sport . th dport"
_KEY_NOPORTS = "ip saddr . ip daddr . meta l4proto . 0 . 0"

_ICMP_ERRORS = "{ " + ", ".join(ICMP_ERRORS.values()) + " }"
# The header of the packet an ICMP error is about (inner IP header at @th,64, IHL 5 assumed):
# saddr @th,160,32, daddr @th,192,32, protocol @th,136,8, ports @th,224,16 and @th,240,16.
# nft 1.0.6 accepts raw payload only in sets declared by ``typeof`` the same raw expressions
# (``type ipv4_addr . ...`` is a datatype mismatch), and with five raw components it cannot
# print the set back (``nft list`` aborts: the typeof user data is not kept), so both ports
# are one 32-bit field, sport << 16 | dport (split again by :func:`parse_related_set`).
_RELATED_TYPEOF = "@th,160,32 . @th,192,32 . @th,136,8 . @th,224,32"
_RELATED_PORTS = _RELATED_TYPEOF
# inner packet not TCP/UDP: ports 0, as in @flows (a constant 0 there makes nft 1.0.6 abort)
_RELATED_NOPORTS = "@th,160,32 . @th,192,32 . @th,136,8 . @th,224,32 & 0"
_INNER_PROTO = "@th,136,8"


def ruleset(max_flows: int = DEFAULT_MAX_FLOWS) -> str:
    """The nftables script that (re)creates table ``inet chainlb_nf`` atomically."""
    if max_flows < 1:
        raise NFError(f"max_flows must be >= 1, got {max_flows}")
    v4, err = "meta nfproto ipv4", f"icmp type {_ICMP_ERRORS}"
    return f"""\
table {FAMILY} {TABLE}
delete table {FAMILY} {TABLE}
table {FAMILY} {TABLE} {{
    counter invalid {{ }}
    counter dropped {{ }}
    set flows {{
        type {_FLOW_TYPE}
        flags dynamic
        counter
        size {max_flows}
    }}
    set invalid_flows {{
        type {_FLOW_TYPE}
        flags dynamic
        counter
        size {max_flows}
    }}
    set related_flows {{
        typeof {_RELATED_TYPEOF}
        flags dynamic
        counter
        size {max_flows}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ip saddr {PROBE_SRC} ip daddr {PROBE_DST} udp dport {PROBE_PORT} accept
        {v4} meta l4proto {{ tcp, udp }} update @flows {{ {_KEY_PORTS} }}
        {v4} {err} {_INNER_PROTO} {{ 6, 17 }} update @related_flows {{ {_RELATED_PORTS} }}
        {v4} {err} {_INNER_PROTO} != {{ 6, 17 }} update @related_flows {{ {_RELATED_NOPORTS} }}
        {v4} meta l4proto != {{ tcp, udp, icmp }} update @flows {{ {_KEY_NOPORTS} }}
        {v4} icmp type != {_ICMP_ERRORS} update @flows {{ {_KEY_NOPORTS} }}
        ct state established,related accept
        ct state invalid {v4} meta l4proto {{ tcp, udp }} update @invalid_flows {{ {_KEY_PORTS} }} counter name "invalid" drop
        ct state invalid {v4} meta l4proto != {{ tcp, udp, icmp }} update @invalid_flows {{ {_KEY_NOPORTS} }} counter name "invalid" drop
        ct state invalid {v4} icmp type != {_ICMP_ERRORS} update @invalid_flows {{ {_KEY_NOPORTS} }} counter name "invalid" drop
        ct state invalid counter name "invalid" drop
        tcp flags & (syn|ack|fin|rst) == syn ct state new accept
        meta l4proto {{ icmp, udp }} ct state new accept
        counter name "dropped" drop
    }}
}}
"""


# --- commands and sysctls ----------------------------------------------------------------

def run(cmd: Sequence[str], stdin: Optional[str] = None) -> str:
    """Run ``cmd``; return stdout, raise NFError naming the command and its stderr on failure."""
    try:
        proc = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NFError(f"{cmd[0]} not found: install it (Debian package 'nftables')") from None
    except subprocess.TimeoutExpired:
        raise NFError(f"{' '.join(cmd)} timed out") from None
    if proc.returncode != 0:
        raise NFError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def sysctl_path(key: str) -> Path:
    """``net.ipv4.ip_forward`` -> /proc/sys/net/ipv4/ip_forward (interface names keep dots)."""
    parts = key.split(".")
    if parts[:3] == ["net", "ipv4", "conf"] and len(parts) > 5:
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return SYSCTL_ROOT.joinpath(*parts)


def write_sysctl(key: str, value: int) -> None:
    """Set a sysctl of this network namespace and read it back."""
    path = sysctl_path(key)
    try:
        path.write_text(f"{value}\n")
        got = path.read_text().strip()
    except OSError as exc:
        raise NFError(f"cannot set {key}={value}: {exc.strerror} ({path})") from None
    if got != str(value):
        raise NFError(f"{key} reads {got} after writing {value}")


def conf_names() -> List[str]:
    """all, default and every interface of this namespace (from /proc/sys, which is per netns)."""
    root = SYSCTL_ROOT / "net/ipv4/conf"
    try:
        return sorted(p.name for p in root.iterdir())
    except OSError as exc:
        raise NFError(f"cannot list {root}: {exc.strerror}") from None


def sysctls_before_rules() -> List[tuple]:
    """No ICMP redirects, no reverse-path filter, on all/default and every interface."""
    out = []
    for name in conf_names():
        out.append((f"net.ipv4.conf.{name}.send_redirects", 0))
        out.append((f"net.ipv4.conf.{name}.rp_filter", 0))
    return out


# --- start / stop ------------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        raise NFError("must run as root (inside the NF host's network namespace)")


def in_init_netns() -> bool:
    """True in the machine's own network namespace (not an NF host's)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == INIT_NETNS_INO
    except OSError:
        return False


def require_nf_netns() -> None:
    """start/stop change forwarding sysctls: never do that to the machine itself."""
    require_root()
    if in_init_netns():
        raise NFError("refusing to change the machine's own network namespace: run this "
                      "inside the NF host (Mininet host.cmd, or ip netns exec NS ...)")


def conntrack_sysctls(timeouts: CtTimeouts = CtTimeouts()) -> List[tuple]:
    """What ``start`` writes once conntrack is active: no loose pick-up, then every timeout."""
    if not isinstance(timeouts, CtTimeouts):
        raise NFError(f"timeouts must be a CtTimeouts, got {type(timeouts).__name__}")
    return [("net.netfilter.nf_conntrack_tcp_loose", 0)] + list(timeouts.sysctls().items())


def parse_ct_timeouts(spec: Optional[str]) -> CtTimeouts:
    """``--ct-timeouts`` ("tcp_established=600,udp=20") -> CtTimeouts; NFError when bad."""
    if spec is None:
        return CtTimeouts()
    try:
        return parse_timeouts(spec)
    except ValueError as exc:
        raise NFError(f"--ct-timeouts {spec!r}: {exc}") from None


def start(name: str, max_flows: int = DEFAULT_MAX_FLOWS,
          timeouts: CtTimeouts = CtTimeouts()) -> None:
    """Configure this netns as the NF: sysctls, the nftables table, conntrack's tcp_loose and
    timeouts, then forwarding on."""
    script = ruleset(max_flows)              # validates before anything changes
    ct_sysctls = conntrack_sysctls(timeouts)
    require_nf_netns()
    write_sysctl("net.ipv4.ip_forward", 0)
    for key, value in sysctls_before_rules():
        write_sysctl(key, value)
    run(["nft", "-f", "-"], stdin=script)
    # conntrack is active in this netns once a ruleset uses ct: its sysctls exist now
    for key, value in ct_sysctls:
        write_sysctl(key, value)
    run(["nft", "list", "chain", FAMILY, TABLE, "forward"])
    write_sysctl("net.ipv4.ip_forward", 1)


def table_exists() -> bool:
    return f"table {FAMILY} {TABLE}" in run(["nft", "list", "tables"])


def stop() -> bool:
    """Forwarding off, then remove the table. Returns False if the NF was not started."""
    require_nf_netns()
    write_sysctl("net.ipv4.ip_forward", 0)
    if not table_exists():
        return False
    run(["nft", "delete", "table", FAMILY, TABLE])
    return True


# --- dump --------------------------------------------------------------------------------

def _port(value: Any) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        return socket.getservbyname(str(value))


def _proto(value: Any) -> str:
    if isinstance(value, int):
        names = {1: "icmp", 6: "tcp", 17: "udp"}
        return names.get(value, str(value))
    return str(value)


def _ipv4(value: Any) -> str:
    """A raw 32-bit payload as nft prints it (a number, maybe hex) -> dotted quad."""
    if isinstance(value, str) and "." in value:
        return value
    try:
        n = value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        raise NFError(f"unexpected IPv4 address in nft output: {value!r}") from None
    if not 0 <= n <= 0xFFFFFFFF:
        raise NFError(f"unexpected IPv4 address in nft output: {value!r}")
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def _raw_int(value: Any, bits: int) -> int:
    try:
        n = value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        raise NFError(f"unexpected {bits}-bit value in nft output: {value!r}") from None
    if not 0 <= n < 1 << bits:
        raise NFError(f"unexpected {bits}-bit value in nft output: {value!r}")
    return n


def _elements(doc: Dict[str, Any]):
    for item in doc.get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            body = elem.get("elem", elem) if isinstance(elem, dict) else {}
            val = body.get("val", {})
            parts = val.get("concat") if isinstance(val, dict) else None
            counter = body.get("counter") or {"packets": 0, "bytes": 0}
            yield elem, parts, {"packets": int(counter["packets"]), "bytes": int(counter["bytes"])}


def parse_set(doc: Dict[str, Any]) -> Dict[tuple, Dict[str, int]]:
    """``nft -j list set`` output -> {(src, dst, proto, sport, dport): {packets, bytes}}."""
    out: Dict[tuple, Dict[str, int]] = {}
    for elem, parts, counter in _elements(doc):
        if not parts or len(parts) != 5:
            raise NFError(f"unexpected set element in nft output: {elem!r}")
        key = (str(parts[0]), str(parts[1]), _proto(parts[2]), _port(parts[3]), _port(parts[4]))
        out[key] = counter
    return out


def parse_related_set(doc: Dict[str, Any]) -> Dict[tuple, Dict[str, int]]:
    """``nft -j list set ... related_flows`` -> {(src, dst, proto, sport, dport): {packets,
    bytes}}: the inner header of the ICMP errors, as the original packet had it. The raw
    elements are (saddr, daddr, protocol, sport << 16 | dport) as numbers."""
    out: Dict[tuple, Dict[str, int]] = {}
    for elem, parts, counter in _elements(doc):
        if not parts or len(parts) != 4:
            raise NFError(f"unexpected related_flows element in nft output: {elem!r}")
        ports = _raw_int(parts[3], 32)
        key = (_ipv4(parts[0]), _ipv4(parts[1]), _proto(_raw_int(parts[2], 8)),
               ports >> 16, ports & 0xFFFF)
        acc = out.setdefault(key, {"packets": 0, "bytes": 0})
        acc["packets"] += counter["packets"]
        acc["bytes"] += counter["bytes"]
    return out


def set_size(doc: Dict[str, Any]) -> int:
    for item in doc.get("nftables", []):
        if "set" in item:
            return int(item["set"].get("size", 0))
    return 0


def parse_counters(doc: Dict[str, Any]) -> Dict[str, int]:
    """``nft -j list counters table ...`` -> {counter name: packets}."""
    return {item["counter"]["name"]: int(item["counter"]["packets"])
            for item in doc.get("nftables", []) if "counter" in item}


def build_dump(name: str, flows_doc: dict, invalid_doc: dict, counters_doc: dict,
               related_doc: Optional[dict] = None) -> Dict[str, Any]:
    """Assemble the dump document from the four nft JSON outputs (pure)."""
    flows = parse_set(flows_doc)
    invalid = parse_set(invalid_doc)
    related = parse_related_set(related_doc or {})
    counters = parse_counters(counters_doc)
    size = set_size(flows_doc)
    related_size = set_size(related_doc or {})
    entries = []
    for key in sorted(set(flows) | set(invalid)):
        src, dst, proto, sport, dport = key
        seen = flows.get(key, {"packets": 0, "bytes": 0})
        entries.append({"src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport,
                        "packets": seen["packets"], "bytes": seen["bytes"],
                        "invalid": invalid.get(key, {}).get("packets", 0)})
    related_entries = [
        {"src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport,
         "packets": v["packets"], "bytes": v["bytes"]}
        for (src, dst, proto, sport, dport), v in sorted(related.items())]
    return {"nf": name, "flows": entries, "related": related_entries,
            "invalid": counters.get("invalid", 0),
            "dropped": counters.get("dropped", 0), "max_flows": size,
            "set_full": (bool(size) and len(flows) >= size)
            or (bool(related_size) and len(related) >= related_size),
            "dumped_at": time.time()}


def _nft_json(*args: str) -> dict:
    text = run(["nft", "-j", *args])
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise NFError(f"nft -j {' '.join(args)} printed invalid JSON: {exc}") from None


def dump(name: str) -> Dict[str, Any]:
    """Read the in-kernel counters of this netns's NF."""
    require_root()
    if not table_exists():
        raise NFError(f"NF not started in this namespace (no table {FAMILY} {TABLE})")
    return build_dump(name,
                      _nft_json("list", "set", FAMILY, TABLE, "flows"),
                      _nft_json("list", "set", FAMILY, TABLE, "invalid_flows"),
                      _nft_json("list", "counters", "table", FAMILY, TABLE),
                      _nft_json("list", "set", FAMILY, TABLE, "related_flows"))


# --- CLI ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agents.nf", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="configure this netns as a stateful NF")
    s.add_argument("--name", required=True, help="NF name, e.g. nf1")
    s.add_argument("--max-flows", type=int, default=DEFAULT_MAX_FLOWS,
                   help=f"size of the per-flow counter sets (default {DEFAULT_MAX_FLOWS})")
    s.add_argument("--ct-timeouts", metavar="SPEC",
                   help="conntrack timeouts in seconds, e.g. tcp_established=600,udp=20 "
                        "(names: " + ", ".join(CtTimeouts().asdict()) + "; others keep the "
                        "kernel defaults)")
    d = sub.add_parser("dump", help="write per-flow counters as JSON")
    d.add_argument("--name", required=True, help="NF name, e.g. nf1")
    d.add_argument("--out", help="output file (default: stdout)")
    sub.add_parser("stop", help="stop forwarding and remove the ruleset")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "start":
            start(args.name, args.max_flows, parse_ct_timeouts(args.ct_timeouts))
            print(f"{args.name}: forwarding through {FAMILY} {TABLE}")
        elif args.cmd == "dump":
            doc = dump(args.name)
            text = json.dumps(doc, indent=1) + "\n"
            if args.out:
                tmp = Path(args.out + ".tmp")
                tmp.write_text(text)
                tmp.replace(args.out)
            else:
                sys.stdout.write(text)
        else:
            print("stopped" if stop() else "not running (forwarding off)")
    except NFError as exc:
        print(f"agents.nf {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"agents.nf {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
