"""The testbed topology, built from parameters.

::

     clients                                   LB hosts (agents)
     c1 10.0.1.1  ──┐                     ┌── lb1 10.0.3.1
     c2 10.0.1.2  ──┤                     ├── lb2 10.0.3.2
     ...            │   ┌─────────────┐   ├── ...          (+ spare lbN+1.. added live)
                    ├───┤     gw      ├───┤
     servers        │   │ OVS, netdev │   │   NF hosts (nftables + conntrack)
     s1 10.0.2.1  ──┤   │ OpenFlow1.3 │   ├── nf1 10.0.4.1
     s2 10.0.2.2  ──┘   └──────┬──────┘   ├── nf2 10.0.4.2
                               │          └── ...          (+ spare nfM+1.. added live)
                     controller tcp:127.0.0.1:6653 (os-ken)

     LB cluster network (chain frames between LB nodes only):
     lb1-eth1 ──┐
     lb2-eth1 ──┼── chainlb0 (Linux bridge in the root namespace)
     ...      ──┘

  client -> gw -> lbX (picks the NF, rewrites dst MAC) -> gw -> nfY (conntrack, routes
  out of the same interface) -> gw -> server; replies take the same way back.

LB nodes also have ``<name>-eth1`` on ``chainlb0``, a kernel bridge that carries the chain
protocol between them, as an LB cluster's own network would: a hop through gw's userspace
datapath costs about five times one through a kernel bridge on these machines. Its MACs are
``02:00:00:01:03:II``; it has no IP addresses. The controller's view tells every agent the
cluster MAC of each LB node (without one, chain frames go through gw).

Every host has one interface ``<name>-eth0`` to ``gw``; the switch port of a host is fixed by its
name (:func:`port_number`: kind code * 1000 + index, e.g. nf2 -> 4002, on ``gw-eth4002``), so
ports are known before hosts exist. Addresses: MAC ``02:00:00:00:KK:II``, IP ``10.0.KK.II/16``
with KK = 1 client, 2 server, 3 lb, 4 nf. ARP is static on every host, covering the spare hosts
that may be added later; links are ``TCULink`` (checksum offload off, needed by the userspace
datapath) and the offload setting is verified with ethtool. IPv6 is off on hosts (no ND/MLD noise).

Only :func:`build_net`, :func:`set_controller_backoff`, :func:`add_host_live`, :func:`remove_host_live`,
:func:`create_cluster_bridge` and :func:`attach_cluster` touch Mininet, OVS or links;
everything else here is pure.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from agents.chain import VARIANTS
from agents.fastpath import FASTPATHS
from ryu_apps.policy import CONTROLLER_MAC
from ryu_apps.probe import PROBE_DST

SWITCH = "gw"
CLUSTER_BRIDGE = "chainlb0"    # the LB cluster network (a Linux bridge)
DPID = "0000000000000001"
CONTROLLER_IP = "127.0.0.1"
CONTROLLER_PORT = 6653
PREFIX_LEN = 16
MAX_INDEX = 200

KIND_CODES = {"client": 1, "server": 2, "lb": 3, "nf": 4}
KIND_PREFIX = {"client": "c", "server": "s", "lb": "lb", "nf": "nf"}
_PREFIX_KIND = {v: k for k, v in KIND_PREFIX.items()}
_NAME_RE = re.compile(r"^(c|s|lb|nf)([1-9][0-9]*)$")


class TestbedError(RuntimeError):
    """A command that configures the running testbed failed."""
    __test__ = False


# --- parameters -------------------------------------------------------------------------

@dataclass(frozen=True)
class TestbedParams:
    """Sizes of the testbed. Spares are the NF / LB hosts that may be added while it runs."""
    __test__ = False
    clients: int = 4
    servers: int = 2
    lbs: int = 4
    nfs: int = 3
    spare_nfs: int = 1
    spare_lbs: int = 1
    chain_len: int = 3
    bw_mbit: Optional[float] = None
    variant: str = VARIANTS[0]      # the chain protocol's variant (agents.chain.VARIANTS)
    fastpath: str = FASTPATHS[0]    # the LB nodes' in-kernel fast path (agents.fastpath)

    LIMITS = (f"limits: clients, servers, lbs, nfs 1..{MAX_INDEX}; spare_nfs, spare_lbs "
              f"0..{MAX_INDEX} with nfs+spare_nfs and lbs+spare_lbs <= {MAX_INDEX}; "
              f"chain_len 1..lbs; bw_mbit empty or 0 < bw_mbit <= 10000; "
              f"variant {' or '.join(VARIANTS)}; fastpath {' or '.join(FASTPATHS)}")

    def validate(self) -> "TestbedParams":
        """Raise ValueError naming every bad field and the limits; return self when valid."""
        bad = []
        for field in ("clients", "servers", "lbs", "nfs"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_INDEX:
                bad.append(f"{field}={v!r}")
        for field in ("spare_nfs", "spare_lbs"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INDEX:
                bad.append(f"{field}={v!r}")
        if not bad:
            if self.nfs + self.spare_nfs > MAX_INDEX:
                bad.append(f"nfs+spare_nfs={self.nfs + self.spare_nfs}")
            if self.lbs + self.spare_lbs > MAX_INDEX:
                bad.append(f"lbs+spare_lbs={self.lbs + self.spare_lbs}")
        lbs = self.lbs if isinstance(self.lbs, int) else 0
        if (not isinstance(self.chain_len, int) or isinstance(self.chain_len, bool)
                or not 1 <= self.chain_len <= max(lbs, 1)):
            bad.append(f"chain_len={self.chain_len!r} (lbs={self.lbs!r})")
        if self.bw_mbit is not None and (
                not isinstance(self.bw_mbit, (int, float)) or isinstance(self.bw_mbit, bool)
                or not 0 < self.bw_mbit <= 10000):
            bad.append(f"bw_mbit={self.bw_mbit!r}")
        if self.variant not in VARIANTS:
            bad.append(f"variant={self.variant!r}")
        if self.fastpath not in FASTPATHS:
            bad.append(f"fastpath={self.fastpath!r}")
        if bad:
            raise ValueError(f"bad testbed parameter(s): {', '.join(bad)} ({self.LIMITS})")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TestbedParams":
        """Build from strings or numbers (e.g. command-line ``key=value``); validates."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown testbed parameter(s): {', '.join(unknown)} "
                             f"(valid: {', '.join(fields)})")
        kwargs: Dict[str, Any] = {}
        for key, raw in values.items():
            try:
                if key in ("variant", "fastpath"):
                    kwargs[key] = str(raw).strip()
                elif key == "bw_mbit":
                    kwargs[key] = None if raw in (None, "", "none", "None") else float(raw)
                else:
                    kwargs[key] = int(raw)
            except (TypeError, ValueError):
                raise ValueError(f"testbed parameter {key}={raw!r} is not a number") from None
        return cls(**kwargs).validate()

    def asdict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --- names and addresses ----------------------------------------------------------------

def parse_name(name: str) -> Tuple[str, int]:
    """'nf3' -> ('nf', 3). ValueError for anything that is not a host name of the testbed."""
    m = _NAME_RE.match(name or "")
    if not m or int(m.group(2)) > MAX_INDEX:
        raise ValueError(f"not a testbed host name: {name!r} (expected c<i>, s<i>, lb<i> or "
                         f"nf<i> with 1 <= i <= {MAX_INDEX})")
    return _PREFIX_KIND[m.group(1)], int(m.group(2))


def kind_of(name: str) -> str:
    """'client' | 'server' | 'lb' | 'nf' for hosts, 'switch' for gw."""
    if name == SWITCH:
        return "switch"
    return parse_name(name)[0]


def index_of(name: str) -> int:
    return parse_name(name)[1]


def host_name(kind: str, index: int) -> str:
    if kind not in KIND_PREFIX:
        raise ValueError(f"unknown host kind {kind!r} (valid: {', '.join(KIND_PREFIX)})")
    name = f"{KIND_PREFIX[kind]}{index}"
    parse_name(name)
    return name


def mac_of(name: str) -> str:
    """nf1 -> 02:00:00:00:04:01 (KK and II in hex)."""
    kind, idx = parse_name(name)
    return f"02:00:00:00:{KIND_CODES[kind]:02x}:{idx:02x}"


def _lb_index(name: str) -> int:
    """The index of LB node ``name``; ValueError for any other host (not on the cluster network)."""
    kind, idx = parse_name(name)
    if kind != "lb":
        raise ValueError(f"{name} is not an LB node: only LB nodes are on the cluster network")
    return idx


def cluster_mac_of(name: str) -> str:
    """lb2 -> 02:00:00:01:03:02, its MAC on the LB cluster network (LB nodes only)."""
    return f"02:00:00:01:{KIND_CODES['lb']:02x}:{_lb_index(name):02x}"


def cluster_intf_of(name: str) -> str:
    """An LB node's interface on the cluster network."""
    _lb_index(name)
    return f"{name}-eth1"


def cluster_port_of(name: str) -> str:
    """The bridge-side end of an LB node's cluster link (root namespace)."""
    _lb_index(name)
    return f"{CLUSTER_BRIDGE}-{name}"


def ip_of(name: str) -> str:
    """nf1 -> 10.0.4.1 (without prefix length)."""
    kind, idx = parse_name(name)
    return f"10.0.{KIND_CODES[kind]}.{idx}"


def intf_of(name: str) -> str:
    """The host's interface to gw."""
    parse_name(name)
    return f"{name}-eth0"


def port_number(name: str) -> int:
    """The fixed gw port of a host: kind code * 1000 + index (c1 -> 1001, nf2 -> 4002)."""
    kind, idx = parse_name(name)
    return KIND_CODES[kind] * 1000 + idx


def switch_intf_of(name: str) -> str:
    return f"{SWITCH}-eth{port_number(name)}"


def name_of_ip(ip: str) -> Optional[str]:
    """Inverse of ip_of, or None for addresses outside the testbed plan."""
    m = re.match(r"^10\.0\.(\d+)\.(\d+)$", ip or "")
    if not m:
        return None
    kinds = {v: k for k, v in KIND_CODES.items()}
    kind, idx = kinds.get(int(m.group(1))), int(m.group(2))
    if kind is None or not 1 <= idx <= MAX_INDEX:
        return None
    return f"{KIND_PREFIX[kind]}{idx}"


def initial_hosts(params: TestbedParams) -> List[str]:
    """Hosts present when the net starts, in port order."""
    return ([f"c{i}" for i in range(1, params.clients + 1)]
            + [f"s{i}" for i in range(1, params.servers + 1)]
            + [f"lb{i}" for i in range(1, params.lbs + 1)]
            + [f"nf{i}" for i in range(1, params.nfs + 1)])


def hosts_of(params: TestbedParams, kind: str) -> List[str]:
    """The initial hosts of one kind ('client', 'server', 'lb', 'nf'), in port order."""
    return [h for h in initial_hosts(params) if kind_of(h) == kind]


def spare_hosts(params: TestbedParams) -> List[str]:
    """Hosts that may be added live (after the initial LBs and NFs)."""
    return ([f"lb{i}" for i in range(params.lbs + 1, params.lbs + params.spare_lbs + 1)]
            + [f"nf{i}" for i in range(params.nfs + 1, params.nfs + params.spare_nfs + 1)])


def planned_hosts(params: TestbedParams) -> List[str]:
    return initial_hosts(params) + spare_hosts(params)


def next_free_name(existing: Iterable[str], kind: str) -> str:
    """The lowest-index host name of ``kind`` not in ``existing`` (for 'addnf' / 'addlb')."""
    taken = {index_of(n) for n in existing if n != SWITCH and kind_of(n) == kind}
    for idx in range(1, MAX_INDEX + 1):
        if idx not in taken:
            return host_name(kind, idx)
    raise ValueError(f"no free {kind} name: all {MAX_INDEX} are in use")


def arp_entries(name: str, others: Iterable[str]) -> List[Tuple[str, str]]:
    """(ip, mac) entries that host ``name`` needs for ``others``; an NF host also maps the
    health probes' destination to the controller (``ryu_apps.probe``)."""
    out = [(ip_of(o), mac_of(o)) for o in others if o != name]
    if kind_of(name) == "nf":
        out.append((PROBE_DST, CONTROLLER_MAC))
    return out


def link_opts(name: str, params: TestbedParams) -> Dict[str, Any]:
    """Link options of a host's link to gw (bandwidth only on client and server links)."""
    opts: Dict[str, Any] = {}
    if params.bw_mbit is not None and kind_of(name) in ("client", "server"):
        opts["bw"] = params.bw_mbit
    return opts


# --- the Mininet topology ---------------------------------------------------------------

def _mininet():
    """Import Mininet lazily so that the pure functions work without it."""
    try:
        from mininet.link import TCULink
        from mininet.node import OVSSwitch, RemoteController
        from mininet.topo import Topo
    except ImportError:
        raise TestbedError("Mininet is not importable: use .venv/bin/python (a venv made from "
                           "/usr/bin/python3 --system-site-packages) after `make setup`") from None
    return Topo, OVSSwitch, RemoteController, TCULink


def _topo_base():
    try:
        from mininet.topo import Topo
        return Topo
    except ImportError:                      # pure helpers stay usable without Mininet
        return object


class TestbedTopo(_topo_base()):
    """The initial hosts (c*, s*, lb1..lbN, nf1..nfM), each linked to gw on its fixed port."""
    __test__ = False

    def build(self, params: TestbedParams = TestbedParams()):  # type: ignore[override]
        _, OVSSwitch, _, TCULink = _mininet()
        params.validate()
        self.params = params
        self.addSwitch(SWITCH, cls=OVSSwitch, datapath="user", protocols="OpenFlow13",
                       dpid=DPID, failMode="secure")
        for name in initial_hosts(params):
            self.addHost(name, ip=f"{ip_of(name)}/{PREFIX_LEN}", mac=mac_of(name))
            self.addLink(name, SWITCH, port1=0, port2=port_number(name), cls=TCULink,
                         **link_opts(name, params))


# --- the running network ----------------------------------------------------------------

def _run(cmd: List[str], stdin: Optional[str] = None) -> str:
    """Run a command in the root namespace, raising TestbedError on failure."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc.stdout


def host_run(host, cmd: List[str], stdin: Optional[str] = None) -> str:
    """Run a command in a host's namespace with its exit status checked."""
    from subprocess import PIPE
    proc = host.popen(cmd, stdin=PIPE, stdout=PIPE, stderr=PIPE)
    out, err = proc.communicate(stdin.encode() if stdin is not None else None, timeout=30)
    if proc.returncode != 0:
        raise TestbedError(f"{host.name}: {' '.join(cmd)} failed (exit {proc.returncode}): "
                           f"{err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def set_static_arp(host, others: Iterable[str]) -> None:
    """Permanent neighbour entries on host for every name in others (one `ip -batch`)."""
    intf = intf_of(host.name)
    lines = [f"neigh replace {ip} lladdr {mac} dev {intf} nud permanent"
             for ip, mac in arp_entries(host.name, others)]
    if lines:
        host_run(host, ["ip", "-batch", "-"], stdin="\n".join(lines) + "\n")


def configure_host(host) -> None:
    """tx checksum offload off on the host side (checked), IPv6 off."""
    host_run(host, ["ethtool", "-K", intf_of(host.name), "tx", "off"])
    host_run(host, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1"])


def configure_switch_port(name: str) -> None:
    _run(["ethtool", "-K", switch_intf_of(name), "tx", "off"])


def build_net(params: TestbedParams = TestbedParams()):
    """Build (not start) the Mininet net: remote controller, gw, initial hosts, static ARP.

    The caller starts it (``net.start()``) once the controller runs, then waits for the
    connection (``net.waitConnected()``) and checks reachability.
    """
    params.validate()
    _, _, RemoteController, TCULink = _mininet()
    from mininet.net import Mininet

    class Controller(RemoteController):
        """The os-ken controller, known to listen (the testbed waits for its REST API first).
        Mininet's own check runs telnet against the OpenFlow port and decodes what comes
        back (the controller's binary HELLO) as UTF-8, which fails now and then."""
        def checkListening(self):
            pass

    net = Mininet(topo=TestbedTopo(params), controller=None, link=TCULink, autoSetMacs=False,
                  autoStaticArp=False, build=False, ipBase=f"10.0.0.0/{PREFIX_LEN}")
    net.addController("c0", controller=Controller, ip=CONTROLLER_IP, port=CONTROLLER_PORT)
    net.build()
    net.testbed_params = params
    planned = planned_hosts(params)
    for host in net.hosts:
        configure_host(host)
        configure_switch_port(host.name)
        set_static_arp(host, planned)
    create_cluster_bridge()
    for host in net.hosts:
        if kind_of(host.name) == "lb":
            attach_cluster(host)
    return net


CONTROLLER_MAX_BACKOFF_MS = 1000   # OVS's least: a restarted controller is reached within 1 s


def set_controller_backoff() -> None:
    """After the switch loses its controller, it tries again every second (OVS doubles its
    wait up to 8 s by default): a restarted controller is back in control within a second.
    Called once the net runs (Mininet creates the Controller record)."""
    uuids = _run(["ovs-vsctl", "--timeout=5", "--bare", "--columns=_uuid", "list",
                  "Controller"]).split()
    if not uuids:
        raise TestbedError("the switch has no controller record to tune")
    for uuid in uuids:
        _run(["ovs-vsctl", "--timeout=5", "set", "Controller", uuid,
              f"max_backoff={CONTROLLER_MAX_BACKOFF_MS}"])


def create_cluster_bridge() -> None:
    """The LB cluster network's bridge: no STP, forwarding at once, IPv6 off.

    A bridge left by a crashed run makes this fail; the runner removes leftovers first
    (``scenarios.testbed.cleanup_leftovers``).
    """
    _run(["ip", "link", "add", CLUSTER_BRIDGE, "type", "bridge", "stp_state", "0",
          "forward_delay", "0"])
    ipv6 = f"/proc/sys/net/ipv6/conf/{CLUSTER_BRIDGE}/disable_ipv6"
    try:
        with open(ipv6, "w") as f:
            f.write("1")
    except OSError:
        pass                                # no IPv6 in this kernel: nothing to silence
    _run(["ip", "link", "set", CLUSTER_BRIDGE, "up"])


def attach_cluster(host) -> None:
    """Link LB host ``host`` to the cluster bridge (``<name>-eth1``, its cluster MAC)."""
    port, intf = cluster_port_of(host.name), cluster_intf_of(host.name)
    _run(["ip", "link", "add", port, "type", "veth", "peer", "name", intf,
          "netns", str(host.pid)])
    _run(["ip", "link", "set", port, "master", CLUSTER_BRIDGE, "up"])
    host_run(host, ["ip", "link", "set", intf, "address", cluster_mac_of(host.name), "up"])


def port_of(net, name: str) -> int:
    """gw's OpenFlow port number for host ``name`` in the (built) net."""
    if name not in net:
        raise ValueError(f"no host {name!r} in the net (hosts: "
                         f"{', '.join(h.name for h in net.hosts)})")
    gw = net[SWITCH]
    for intf, port in gw.ports.items():
        link = getattr(intf, "link", None)
        if link is None:
            continue
        peer = link.intf1 if link.intf2 is intf else link.intf2
        if peer.node.name == name:
            return port
    raise ValueError(f"host {name!r} has no link to {SWITCH}")


def ovs_ofport(intf: str) -> int:
    """The port number OVS actually assigned to ``intf`` (-1 if it failed)."""
    return int(_run(["ovs-vsctl", "get", "Interface", intf, "ofport"]).strip())


def add_host_live(net, name: str):
    """Add host ``name`` (an NF or LB, or any testbed host) to the RUNNING net; return it.

    Creates the host and its TCULink to gw, attaches the switch side to OVS on the fixed port
    (checked against OVS), sets IP/MAC, offload off, IPv6 off, and static ARP both ways. The
    port is also on ``host.gw_port`` and from :func:`port_of`.
    """
    parse_name(name)
    if name in net:
        raise ValueError(f"host {name!r} already exists")
    _, _, _, TCULink = _mininet()
    params: TestbedParams = getattr(net, "testbed_params", TestbedParams())
    gw = net[SWITCH]
    port = port_number(name)
    host = net.addHost(name, ip=f"{ip_of(name)}/{PREFIX_LEN}", mac=mac_of(name))
    try:
        link = net.addLink(host, gw, port1=0, port2=port, cls=TCULink, **link_opts(name, params))
        sw_intf = link.intf2.name
        _run(["ovs-vsctl", "add-port", SWITCH, sw_intf, "--", "set", "Interface", sw_intf,
              f"ofport_request={port}"])
        _run(["ip", "link", "set", sw_intf, "up"])
        gw.TCReapply(link.intf2)
        got = ovs_ofport(sw_intf)
        if got != port:
            raise TestbedError(f"OVS gave {sw_intf} port {got}, expected {port}")
        host.configDefault()
        host_run(host, ["ip", "link", "set", intf_of(name), "up"])
        configure_host(host)
        configure_switch_port(name)
        if kind_of(name) == "lb":
            attach_cluster(host)
        others = [h.name for h in net.hosts if h is not host]
        set_static_arp(host, set(others) | set(planned_hosts(params)))
        for other in net.hosts:
            if other is not host:
                set_static_arp(other, [name])
    except Exception:
        _remove(net, host)
        raise
    host.gw_port = port
    return host


def _remove(net, host) -> None:
    """Best-effort removal of a host and its link (used on failure and by remove_host_live)."""
    gw = net[SWITCH]
    for link in list(net.links):
        if host in (link.intf1.node, link.intf2.node):
            sw = link.intf2 if link.intf2.node is gw else link.intf1
            subprocess.run(["ovs-vsctl", "--if-exists", "del-port", SWITCH, sw.name],
                           capture_output=True)
            net.delLink(link)
    if kind_of(host.name) == "lb":
        subprocess.run(["ip", "link", "del", cluster_port_of(host.name)], capture_output=True)
    if host in net.hosts:
        net.delHost(host)


def remove_host_live(net, name: str) -> None:
    """Detach host ``name`` from gw and delete it (its processes die with its shell)."""
    if name not in net:
        raise ValueError(f"no host {name!r} in the net")
    _remove(net, net[name])
