"""The NF (agents.nf): ruleset parsing as pure logic, and the real firewall in network namespaces.

The root test builds plain namespaces (not Mininet): cli, srv, nf1, nf2 on a Linux bridge that
lives in its own namespace. The client's route to the server and the server's route back go via
nf1's IP; re-routing both to nf2 mid-connection moves the connection, and nf2's conntrack
(tcp_loose=0) drops it as invalid: the TCP connection stalls. Two more root tests: ``start
--ct-timeouts`` in a scratch namespace reads every conntrack sysctl back, and UDP to a closed
port through nf1 puts the port-unreachable errors in the dump's ``related`` under the UDP
datagram's own tuple (not in ``flows``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agents import nf
from agents.conntrack import CtTimeouts

ROOT = Path(__file__).resolve().parent.parent

# --- pure -------------------------------------------------------------------------------

FLOWS_DOC = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"set": {"family": "inet", "name": "flows", "table": "chainlb_nf", "size": 4,
             "elem": [
                 {"elem": {"val": {"concat": ["10.0.1.1", "10.0.2.1", "tcp", 49022, 5001]},
                           "counter": {"packets": 5, "bytes": 273}}},
                 {"elem": {"val": {"concat": ["10.0.2.1", "10.0.1.1", "tcp", 5001, 49022]},
                           "counter": {"packets": 3, "bytes": 164}}},
                 {"elem": {"val": {"concat": ["10.0.1.1", "10.0.2.1", "icmp", 0, 0]},
                           "counter": {"packets": 2, "bytes": 168}}}]}}]}
INVALID_DOC = {"nftables": [
    {"set": {"name": "invalid_flows", "size": 4, "elem": [
        {"elem": {"val": {"concat": ["10.0.1.1", "10.0.2.1", "tcp", 49022, 5001]},
                  "counter": {"packets": 4, "bytes": 200}}}]}}]}
COUNTERS_DOC = {"nftables": [
    {"counter": {"name": "invalid", "packets": 4, "bytes": 200}},
    {"counter": {"name": "dropped", "packets": 1, "bytes": 29}}]}


def test_build_dump_merges_sets_and_counters():
    doc = nf.build_dump("nf2", FLOWS_DOC, INVALID_DOC, COUNTERS_DOC)
    assert doc["nf"] == "nf2" and doc["invalid"] == 4 and doc["dropped"] == 1
    by_key = {(f["src"], f["proto"], f["sport"]): f for f in doc["flows"]}
    fwd = by_key[("10.0.1.1", "tcp", 49022)]
    assert (fwd["dst"], fwd["dport"], fwd["packets"], fwd["bytes"], fwd["invalid"]) == \
        ("10.0.2.1", 5001, 5, 273, 4)
    assert by_key[("10.0.2.1", "tcp", 5001)]["invalid"] == 0
    assert by_key[("10.0.1.1", "icmp", 0)]["packets"] == 2
    assert doc["max_flows"] == 4 and doc["set_full"] is False


def test_set_full_flagged_and_empty_set():
    full = json.loads(json.dumps(FLOWS_DOC))
    full["nftables"][1]["set"]["size"] = 3
    assert nf.build_dump("nf1", full, {}, {})["set_full"] is True
    empty = {"nftables": [{"set": {"name": "flows", "size": 8}}]}
    doc = nf.build_dump("nf1", empty, empty, {})
    assert doc["flows"] == [] and doc["invalid"] == 0 and doc["set_full"] is False


def test_parse_set_accepts_names_and_numbers():
    doc = {"nftables": [{"set": {"elem": [
        {"elem": {"val": {"concat": ["1.1.1.1", "2.2.2.2", 17, "53", "domain"]},
                  "counter": {"packets": 1, "bytes": 2}}}]}}]}
    assert nf.parse_set(doc) == {("1.1.1.1", "2.2.2.2", "udp", 53, 53): {"packets": 1, "bytes": 2}}
    with pytest.raises(nf.NFError):
        nf.parse_set({"nftables": [{"set": {"elem": [{"elem": {"val": "x"}}]}}]})


def test_ruleset_has_the_required_rules():
    text = nf.ruleset(1000)
    for needle in ("policy drop", "ct state established,related accept",
                   'ct state invalid counter name "invalid" drop',
                   "tcp flags & (syn|ack|fin|rst) == syn ct state new accept",
                   "meta l4proto { icmp, udp } ct state new accept",
                   'counter name "dropped" drop', "size 1000", "update @flows"):
        assert needle in text
    # counting comes before any verdict
    assert text.index("update @flows") < text.index("ct state established,related accept")
    with pytest.raises(nf.NFError):
        nf.ruleset(0)


def test_sysctl_path_keeps_interface_dots():
    assert nf.sysctl_path("net.ipv4.ip_forward") == Path("/proc/sys/net/ipv4/ip_forward")
    assert nf.sysctl_path("net.ipv4.conf.eth0.100.rp_filter") == \
        Path("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")


# related_flows as nft 1.0.6 prints it: raw numbers (saddr, daddr, protocol, sport << 16 | dport)
RELATED_DOC = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"set": {"family": "inet", "name": "related_flows", "table": "chainlb_nf",
             "type": ["integer", "integer", "integer", "integer"], "size": 4, "elem": [
                 # 10.0.1.1:49022 -> 10.0.2.1:5001 tcp (a port unreachable from 10.0.2.1)
                 {"elem": {"val": {"concat": [167772417, 167772673, 6, 49022 << 16 | 5001]},
                           "counter": {"packets": 2, "bytes": 140}}},
                 # the inner packet an echo request (ports zeroed by the rule), hex accepted
                 {"elem": {"val": {"concat": ["0x0a000101", "0x0a000201", "0x01", 0]},
                           "counter": {"packets": 1, "bytes": 56}}}]}}]}


def test_build_dump_reports_related_icmp_errors_by_inner_tuple():
    doc = nf.build_dump("nf1", FLOWS_DOC, INVALID_DOC, COUNTERS_DOC, RELATED_DOC)
    assert doc["related"] == [
        {"src": "10.0.1.1", "dst": "10.0.2.1", "proto": "icmp", "sport": 0, "dport": 0,
         "packets": 1, "bytes": 56},
        {"src": "10.0.1.1", "dst": "10.0.2.1", "proto": "tcp", "sport": 49022, "dport": 5001,
         "packets": 2, "bytes": 140}]
    assert len(doc["flows"]) == 3 and doc["set_full"] is False   # flows untouched
    assert nf.build_dump("nf1", FLOWS_DOC, {}, {})["related"] == []   # no related set given
    full = json.loads(json.dumps(RELATED_DOC))
    full["nftables"][1]["set"]["size"] = 2
    assert nf.build_dump("nf1", FLOWS_DOC, {}, {}, full)["set_full"] is True


def test_parse_related_set_rejects_unexpected_elements():
    for val in ({"concat": ["10.0.1.1", "10.0.2.1", "tcp", 1, 2]},     # a 5-tuple element
                {"concat": [167772417, 167772673, 300, 0]},              # not 8 bits
                {"concat": [-1, 167772673, 6, 0]}, "x"):
        with pytest.raises(nf.NFError, match="nft output"):
            nf.parse_related_set({"nftables": [{"set": {"elem": [{"elem": {"val": val}}]}}]})


def test_ruleset_counts_icmp_errors_by_inner_header_not_in_flows():
    text = nf.ruleset(1000)
    errors = ("icmp type { destination-unreachable, source-quench, redirect, time-exceeded, "
              "parameter-problem }")
    assert "typeof @th,160,32 . @th,192,32 . @th,136,8 . @th,224,32" in text
    assert f"{errors} @th,136,8 {{ 6, 17 }} update @related_flows {{ @th,160,32 . @th,192,32 " \
        ". @th,136,8 . @th,224,32 }" in text
    assert f"{errors} @th,136,8 != {{ 6, 17 }} update @related_flows" in text
    # non-TCP/UDP packets reach @flows only when they are not ICMP errors
    flows_noports = [line.strip() for line in text.splitlines()
                     if "update @flows" in line and ". 0 . 0" in line]
    assert flows_noports == [
        "meta nfproto ipv4 meta l4proto != { tcp, udp, icmp } update @flows "
        "{ ip saddr . ip daddr . meta l4proto . 0 . 0 }",
        "meta nfproto ipv4 icmp type != { destination-unreachable, source-quench, redirect, "
        "time-exceeded, parameter-problem } update @flows "
        "{ ip saddr . ip daddr . meta l4proto . 0 . 0 }"]
    assert text.index("update @related_flows") < text.index("ct state established,related accept")
    assert "update @invalid_flows" not in text.split(errors + " @th,136,8 != { 6, 17 }")[0]


def test_ct_timeouts_option_and_sysctl_list():
    args = nf._parser().parse_args(["start", "--name", "nf1",
                                    "--ct-timeouts", "tcp_established=600,udp=20"])
    t = nf.parse_ct_timeouts(args.ct_timeouts)
    assert (t.tcp_established, t.udp, t.icmp) == (600, 20, CtTimeouts().icmp)
    assert nf.parse_ct_timeouts(None) == CtTimeouts()
    assert nf._parser().parse_args(["start", "--name", "nf1"]).ct_timeouts is None
    items = nf.conntrack_sysctls(t)
    assert items[0] == ("net.netfilter.nf_conntrack_tcp_loose", 0)
    got = dict(items)
    assert len(got) == len(items) == 1 + len(CtTimeouts().asdict())
    assert got["net.netfilter.nf_conntrack_tcp_timeout_established"] == 600
    assert got["net.netfilter.nf_conntrack_udp_timeout"] == 20
    assert got["net.netfilter.nf_conntrack_udp_timeout_stream"] == 120
    assert got["net.netfilter.nf_conntrack_icmp_timeout"] == 30
    assert got["net.netfilter.nf_conntrack_generic_timeout"] == 600
    assert set(got) - {"net.netfilter.nf_conntrack_tcp_loose"} == set(t.sysctls())
    assert dict(nf.conntrack_sysctls()) == dict(
        CtTimeouts().sysctls(), **{"net.netfilter.nf_conntrack_tcp_loose": 0})
    for spec, needle in (("tcp_established=0", "whole seconds"), ("foo=1", "unknown"),
                         ("udp", "expected name=seconds"), ("udp=x", "not a whole number")):
        with pytest.raises(nf.NFError, match=needle):
            nf.parse_ct_timeouts(spec)


def _nf_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "agents.nf", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_cli_rejects_bad_parameter_before_changing_anything():
    proc = _nf_cli("start", "--name", "nf1", "--max-flows", "0")
    assert proc.returncode == 1 and "max_flows must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_rejects_bad_ct_timeouts_in_one_line():
    proc = _nf_cli("start", "--name", "nf1", "--ct-timeouts", "tcp_established=600,udp=soon")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("agents.nf start: error: --ct-timeouts")
    assert "udp='soon' is not a whole number of seconds" in proc.stderr


def test_cli_refuses_the_machines_own_namespace():
    """start/stop outside an NF host must not touch the machine's forwarding sysctls."""
    if not nf.in_init_netns():
        pytest.skip("not running in the initial network namespace")
    before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    for args in (("start", "--name", "nf1"), ("stop",)):
        proc = _nf_cli(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert ("refusing" in proc.stderr) if os.geteuid() == 0 else \
            ("must run as root" in proc.stderr)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == before


# --- real namespaces (root) ---------------------------------------------------------------

ECHO_SERVER = r"""
import select, socket
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 5001)); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5002))
print("ready", flush=True)
conns = []
while True:
    r, _, _ = select.select([t, u] + conns, [], [])
    for s in r:
        if s is t:
            conns.append(t.accept()[0])
        elif s is u:
            data, addr = u.recvfrom(2048); u.sendto(data, addr)
        else:
            data = s.recv(65536)
            if data:
                s.sendall(data)
            else:
                conns.remove(s); s.close()
"""

ECHO_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 5001), timeout=5)
s.settimeout(float(sys.argv[2]))
print("connected", s.getsockname()[1], flush=True)
for line in sys.stdin:
    n = int(line); s.sendall(b"x" * n); got = 0
    try:
        while got < n:
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
        print("ok" if got == n else "closed", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
"""

UDP_PING = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.sendto(b"hello", (sys.argv[1], 5002)); print(u.recvfrom(100)[0].decode())
"""

RAW_PROTO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); s.sendto(b"x" * 8, (sys.argv[1], 0))
"""

HOSTS = {"cli": ("10.0.1.1", "02:00:00:00:01:01"), "srv": ("10.0.2.1", "02:00:00:00:02:01"),
         "nf1": ("10.0.4.1", "02:00:00:00:04:01"), "nf2": ("10.0.4.2", "02:00:00:00:04:02")}


def sh(*cmd: str, **kw) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


class Lab:
    """Namespaces chainlbtest-<tag>-{br,cli,srv,nf1,nf2}; removed by close()."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:6]
        self.created: list = []
        self.procs: list = []

    def ns(self, host: str) -> str:
        return f"chainlbtest-{self.tag}-{host}"

    def build(self) -> None:
        br = self.ns("br")
        sh("ip", "netns", "add", br)
        self.created.append(br)
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        for i, (host, (ip, mac)) in enumerate(HOSTS.items()):
            ns = self.ns(host)
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            intf, port = f"{host}-eth0", f"p{i}"
            sh("ip", "link", "add", intf, "netns", ns, "address", mac, "type", "veth",
               "peer", "name", port, "netns", br)
            sh("ip", "-n", br, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/16", "dev", intf)
            sh("ip", "-n", ns, "link", "set", intf, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ethtool", "-K", intf, "tx", "off")
            sh("ip", "netns", "exec", br, "ethtool", "-K", port, "tx", "off")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0")
        for host, (_, _) in HOSTS.items():       # static ARP, as in the testbed
            for other, (oip, omac) in HOSTS.items():
                if other != host:
                    sh("ip", "-n", self.ns(host), "neigh", "replace", oip, "lladdr", omac,
                       "dev", f"{host}-eth0", "nud", "permanent")

    def exec(self, host: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *cmd], capture_output=True,
                              text=True, timeout=20, **kw)

    def py(self, host: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return self.exec(host, sys.executable, *args, cwd=ROOT, env=env)

    def popen(self, host: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.procs.append(p)
        return p

    def route_via(self, nf_host: str) -> None:
        gw = HOSTS[nf_host][0]
        sh("ip", "-n", self.ns("cli"), "route", "replace", "10.0.2.1/32", "via", gw)
        sh("ip", "-n", self.ns("srv"), "route", "replace", "10.0.1.1/32", "via", gw)

    def dump(self, nf_host: str) -> dict:
        proc = self.py(nf_host, "-m", "agents.nf", "dump", "--name", nf_host)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tcp_flow(doc: dict, src: str, dst: str, dport: int) -> dict:
    found = [f for f in doc["flows"] if (f["src"], f["dst"], f["proto"], f["dport"]) ==
             (src, dst, "tcp", dport)]
    assert len(found) <= 1
    return found[0] if found else {}


@pytest.fixture
def lab():
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def wait_line(proc: subprocess.Popen, timeout: float = 10) -> str:
    """Read one line from a child's stdout, failing after ``timeout`` seconds."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    assert sel.select(timeout), "no output from child process"
    return proc.stdout.readline().strip()


@pytest.mark.root
def test_moved_tcp_connection_breaks_at_second_nf(lab):
    for host in ("nf1", "nf2"):
        started = lab.py(host, "-m", "agents.nf", "start", "--name", host)
        assert started.returncode == 0, started.stderr
    for key, want in (("net.ipv4.ip_forward", "1"), ("net.netfilter.nf_conntrack_tcp_loose", "0"),
                      ("net.ipv4.conf.all.send_redirects", "0"),
                      ("net.ipv4.conf.nf1-eth0.send_redirects", "0"),
                      ("net.ipv4.conf.all.rp_filter", "0")):
        assert lab.exec("nf1", "sysctl", "-n", key).stdout.strip() == want, key
    lab.route_via("nf1")

    server = lab.popen("srv", "-c", ECHO_SERVER)
    assert wait_line(server) == "ready"

    # ping and UDP through nf1
    assert lab.exec("cli", "ping", "-c1", "-W2", "10.0.2.1").returncode == 0
    udp = lab.exec("cli", sys.executable, "-c", UDP_PING, "10.0.2.1")
    assert udp.stdout.strip() == "hello", udp.stderr

    client = lab.popen("cli", "-c", ECHO_CLIENT, "10.0.2.1", "1.5")
    status, cport = wait_line(client).split()
    assert status == "connected"
    for _ in range(3):
        client.stdin.write("20000\n")
        assert wait_line(client) == "ok"

    d1 = lab.dump("nf1")
    fwd = tcp_flow(d1, "10.0.1.1", "10.0.2.1", 5001)
    back = tcp_flow(d1, "10.0.2.1", "10.0.1.1", int(cport))
    assert fwd["sport"] == int(cport) and fwd["packets"] >= 4 and fwd["bytes"] >= 60000
    assert back["packets"] >= 4 and back["bytes"] >= 60000 and fwd["invalid"] == 0
    assert d1["invalid"] == 0
    assert any(f["proto"] == "udp" and f["dport"] == 5002 for f in d1["flows"])
    assert any(f["proto"] == "icmp" for f in d1["flows"])
    assert tcp_flow(lab.dump("nf2"), "10.0.1.1", "10.0.2.1", 5001) == {}

    # an unknown protocol is counted and dropped
    raw = lab.exec("cli", sys.executable, "-c", RAW_PROTO, "10.0.2.1")
    assert raw.returncode == 0, raw.stderr
    d1b = lab.dump("nf1")
    assert d1b["dropped"] >= 1
    assert any(f["proto"] == "253" and f["packets"] >= 1 for f in d1b["flows"])

    # move the connection mid-flight: nf2 has no conntrack state for it
    lab.route_via("nf2")
    client.stdin.write("20000\n")
    assert wait_line(client) == "timeout"
    d2 = lab.dump("nf2")
    moved = tcp_flow(d2, "10.0.1.1", "10.0.2.1", 5001)
    assert moved["sport"] == int(cport) and moved["packets"] >= 1
    assert moved["invalid"] >= moved["packets"]          # every packet of it dropped
    assert d2["invalid"] >= moved["invalid"]
    # and the connection stays broken while routed via nf2
    client.stdin.write("10\n")
    assert wait_line(client) == "timeout"

    # a new connection via nf2 is fine: the break is about state, not reachability
    fresh = lab.popen("cli", "-c", ECHO_CLIENT, "10.0.2.1", "3")
    assert wait_line(fresh).startswith("connected")
    fresh.stdin.write("1000\n")
    assert wait_line(fresh) == "ok"

    stopped = lab.py("nf2", "-m", "agents.nf", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert lab.exec("nf2", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert "chainlb_nf" not in lab.exec("nf2", "nft", "list", "tables").stdout


@pytest.mark.root
def test_start_writes_the_conntrack_timeouts_of_the_spec():
    """start --ct-timeouts in a scratch namespace: every conntrack sysctl reads back."""
    ns = f"chainlbtest-{uuid.uuid4().hex[:6]}-ct"
    sh("ip", "netns", "add", ns)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        spec = "tcp_established=600,udp=20,icmp=7,tcp_time_wait=33"
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "agents.nf",
                               "start", "--name", "nf1", "--ct-timeouts", spec], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        want = dict(nf.conntrack_sysctls(nf.parse_ct_timeouts(spec)))
        assert want["net.netfilter.nf_conntrack_tcp_timeout_time_wait"] == 33
        got = {}
        for key in want:
            got[key] = int(sh("ip", "netns", "exec", ns, "sysctl", "-n", key).strip())
        assert got == want
        assert sh("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
        # the ruleset prints back (nft 1.0.6 aborts on some raw-payload sets)
        assert "set related_flows" in sh("ip", "netns", "exec", ns, "nft", "list", "ruleset")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


UDP_TO_CLOSED_PORT = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 0))
for _ in range(3):
    u.sendto(b"hello", (sys.argv[1], 5009))
print(u.getsockname()[1])
"""


@pytest.mark.root
def test_icmp_errors_are_counted_by_the_inner_tuple(lab):
    started = lab.py("nf1", "-m", "agents.nf", "start", "--name", "nf1")
    assert started.returncode == 0, started.stderr
    lab.route_via("nf1")
    sh("ip", "netns", "exec", lab.ns("srv"), "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
    proc = lab.exec("cli", sys.executable, "-c", UDP_TO_CLOSED_PORT, "10.0.2.1")
    assert proc.returncode == 0, proc.stderr
    cport = int(proc.stdout)
    for _ in range(20):                 # the errors are forwarded asynchronously
        doc = lab.dump("nf1")
        if sum(r["packets"] for r in doc["related"]) >= 3:
            break
        time.sleep(0.1)
    # port unreachable from srv to cli, counted as a packet of cli -> srv:5009/udp
    assert doc["related"] == [{"src": "10.0.1.1", "dst": "10.0.2.1", "proto": "udp",
                               "sport": cport, "dport": 5009, "packets": 3,
                               "bytes": doc["related"][0]["bytes"]}]
    assert doc["related"][0]["bytes"] >= 3 * 56
    assert not [f for f in doc["flows"] if f["proto"] == "icmp"]     # not also in @flows
    fwd = [f for f in doc["flows"] if f["proto"] == "udp" and f["sport"] == cport]
    assert len(fwd) == 1 and fwd[0]["packets"] == 3
