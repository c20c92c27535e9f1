"""The gateway's steering of IPv4 fragments (ryu_apps.gateway.steering_flows) and the flows the
app sends for it, checked against Open vSwitch itself.

Fragments are steered by the two addresses only (``bundle(symmetric_l3, ...)``): every fragment
of a datagram, first or later, in either direction, reaches one LB node whatever the switch's
fragment mode; other IPv4 keeps the 5-tuple hash the chain predicts (``agents.steering``).
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import tempfile

import pytest
from os_ken.ofproto import nicira_ext, ofproto_v1_3, ofproto_v1_3_parser

from agents.keys import flow_key
from ryu_apps.gateway import (COOKIE, ETH_IPV4, NX_HASH_FIELDS_SYMMETRIC_L3,
                              NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP, PRIO_EDGE_DROP, PRIO_STEER,
                              PRIO_STEER_FRAG, Gateway, SteeringFlow, steering_flows)
from ryu_apps.policy import EMPTY_SLOT_PORT, SetSteering
from test_steering import choice

BRIDGE = "chainlbfragt"
EDGES = (1, 6)                          # a client's port and a server's
PORTS = (2, EMPTY_SLOT_PORT, 3, 4, 5)   # the bundle's slots, one of them empty
FIELD_NAMES = {NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP: "symmetric_l3l4+udp",
               NX_HASH_FIELDS_SYMMETRIC_L3: "symmetric_l3"}      # as ovs-ofctl spells them
FRAG_NAMES = {nicira_ext.NXM_IP_FRAG_YES: "yes", nicira_ext.NXM_IP_FRAG_NO: "no",
              nicira_ext.NXM_IP_FRAG_FIRST: "first", nicira_ext.NXM_IP_FRAG_LATER: "later",
              nicira_ext.NXM_IP_FRAG_NOT_LATER: "not_later"}


class _Datapath:
    """What the app needs of an os-ken datapath, without a socket: messages serialize."""
    ofproto, ofproto_parser = ofproto_v1_3, ofproto_v1_3_parser

    def __init__(self):
        self.xid, self.sent = 0, []

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg):
        if msg.xid is None:
            self.set_xid(msg)
        msg.serialize()
        self.sent.append(bytes(msg.buf))


def gateway_on(dp) -> Gateway:
    """A Gateway that writes to ``dp``, without os-ken's app machinery (only the flow methods
    are used)."""
    gw = Gateway.__new__(Gateway)
    gw.dp = dp
    gw.logger = logging.getLogger("test_fragments_gw")
    return gw


def ofctl_flow(f: SteeringFlow) -> str:
    """``f`` in ovs-ofctl's flow syntax, with the app's cookie."""
    m = dict(f.match)
    parts = [f"cookie={COOKIE:#x}", f"priority={f.priority}", f"in_port={m.pop('in_port')}"]
    eth_type = m.pop("eth_type", m.pop("eth_type_nxm", None))
    if eth_type is not None:
        parts.append(f"dl_type={eth_type:#06x}")
    if "ip_frag" in m:
        parts.append(f"nw_frag={FRAG_NAMES[m.pop('ip_frag')]}")
    assert not m, f"no ovs-ofctl translation for {m}"
    members = ",".join(map(str, f.members))
    actions = "drop" if f.hash_fields is None else (
        f"bundle({FIELD_NAMES[f.hash_fields]},0,hrw,ofport,members:{members})")
    return ",".join(parts) + f",actions={actions}"


def oxm_fields(match) -> list[tuple[int, int, bytes]]:
    """(class, field, payload) of a serialized OFPMatch's OXM TLVs, in order."""
    buf = bytearray()
    length = match.serialize(buf, 0)
    (mlen,) = struct.unpack_from("!H", buf, 2)
    assert length >= mlen
    out, off = [], 4
    while off < mlen:
        cls, fh, n = struct.unpack_from("!HBB", buf, off)
        out.append((cls, fh >> 1, bytes(buf[off + 4:off + 4 + n])))
        off += 4 + n
    return out


# --- no root ---------------------------------------------------------------------------------

def test_steering_flows_per_edge_port():
    flows = steering_flows((1, 6), (2, EMPTY_SLOT_PORT, 3))
    frag = {"eth_type_nxm": ETH_IPV4, "ip_frag": nicira_ext.NXM_IP_FRAG_YES}
    assert flows == [
        SteeringFlow(PRIO_STEER_FRAG, {"in_port": 1, **frag}, NX_HASH_FIELDS_SYMMETRIC_L3,
                     (2, EMPTY_SLOT_PORT, 3)),
        SteeringFlow(PRIO_STEER, {"in_port": 1, "eth_type": ETH_IPV4},
                     NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP, (2, EMPTY_SLOT_PORT, 3)),
        SteeringFlow(PRIO_EDGE_DROP, {"in_port": 1}, None),
        SteeringFlow(PRIO_STEER_FRAG, {"in_port": 6, **frag}, NX_HASH_FIELDS_SYMMETRIC_L3,
                     (2, EMPTY_SLOT_PORT, 3)),
        SteeringFlow(PRIO_STEER, {"in_port": 6, "eth_type": ETH_IPV4},
                     NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP, (2, EMPTY_SLOT_PORT, 3)),
        SteeringFlow(PRIO_EDGE_DROP, {"in_port": 6}, None),
    ]
    assert PRIO_EDGE_DROP < PRIO_STEER < PRIO_STEER_FRAG
    assert ofctl_flow(flows[0]) == ("cookie=0xc4a1,priority=210,in_port=1,dl_type=0x0800,"
                                    "nw_frag=yes,actions=bundle(symmetric_l3,0,hrw,ofport,"
                                    f"members:2,{EMPTY_SLOT_PORT},3)")


def test_no_lb_node_up_drops_the_same_flows():
    """An update replaces every flow of the last one: the same (priority, match) pairs."""
    full, empty = steering_flows((1, 6), (2, 3)), steering_flows((1, 6), ())
    assert [(f.priority, f.match) for f in full] == [(f.priority, f.match) for f in empty]
    assert all(f.hash_fields is None and f.members == () for f in empty)


def test_the_fragment_match_puts_the_ethertype_before_ip_frag():
    """OVS rejects a match field whose prerequisite comes after it (OFPBMC_BAD_PREREQ), and
    OFPMatch orders its fields by OXM class."""
    (f, *_) = steering_flows((1,), (2, 3))
    fields = oxm_fields(ofproto_v1_3_parser.OFPMatch(**f.match))
    keys = [(cls, field) for cls, field, _ in fields]
    eth_type, ip_frag = (0x0000, 3), (0x0001, 26)    # NXM_OF_ETH_TYPE, NXM_NX_IP_FRAG
    assert eth_type in keys and ip_frag in keys and keys.index(eth_type) < keys.index(ip_frag)
    assert dict(((c, fl), v) for c, fl, v in fields)[ip_frag] == b"\x01\x01"  # value/mask


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl")
def test_open_vswitch_decodes_the_apps_flow_mods():
    """The app's messages, as ovs-ofctl ofp-print reads them (no switch needed)."""
    dp = _Datapath()
    gateway_on(dp)._set_steering(SetSteering((1,), (2, EMPTY_SLOT_PORT, 3)))
    printed = [subprocess.run(["ovs-ofctl", "ofp-print", msg.hex()], capture_output=True,
                              text=True, check=True).stdout.strip() for msg in dp.sent]
    members = f"members:2,{EMPTY_SLOT_PORT},3"
    assert printed == [
        "OFPT_FLOW_MOD (OF1.3) (xid=0x1): ADD priority=210,ip,in_port=1,nw_frag=yes "
        f"cookie:0xc4a1 out_port:0 actions=bundle(symmetric_l3,0,hrw,ofport,{members})",
        "OFPT_FLOW_MOD (OF1.3) (xid=0x2): ADD priority=200,ip,in_port=1 "
        f"cookie:0xc4a1 out_port:0 actions=bundle(symmetric_l3l4+udp,0,hrw,ofport,{members})",
        "OFPT_FLOW_MOD (OF1.3) (xid=0x3): ADD priority=150,in_port=1 "
        "cookie:0xc4a1 out_port:0 actions=drop",
    ], printed


# --- root: a live bridge ---------------------------------------------------------------------

class OpenFlowConn(_Datapath):
    """A bare OpenFlow 1.3 connection to a bridge's management socket, shaped like the os-ken
    datapath the app writes to."""

    def __init__(self, bridge: str):
        super().__init__()
        rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(f"{rundir}/{bridge}.mgmt")
        self.send_msg(ofproto_v1_3_parser.OFPHello(self))
        assert self._recv()[0] == ofproto_v1_3.OFPT_HELLO

    def send_msg(self, msg):
        super().send_msg(msg)
        self.sock.sendall(self.sent.pop())

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("switch closed the connection")
            data += chunk
        return data

    def _recv(self) -> tuple[int, int, bytes]:
        head = self._read(8)
        _, msg_type, length, xid = struct.unpack("!BBHI", head)
        return msg_type, xid, head + self._read(length - 8)

    def barrier(self) -> list[str]:
        """Wait until the switch has handled all sent; its error replies (ofp-print's text)."""
        req = ofproto_v1_3_parser.OFPBarrierRequest(self)
        xid = self.set_xid(req)
        self.send_msg(req)
        errors = []
        while True:
            msg_type, rxid, data = self._recv()
            if msg_type == ofproto_v1_3.OFPT_ERROR:
                errors.append(subprocess.run(["ovs-ofctl", "ofp-print", data.hex()],
                                             capture_output=True, text=True).stdout)
            elif msg_type == ofproto_v1_3.OFPT_BARRIER_REPLY and rxid == xid:
                return errors

    def close(self):
        self.sock.close()


def sh(*args, ok=(0,)) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode in ok, f"{args}: {r.returncode} {r.stderr}"
    return r.stdout


def installed_flows(bridge: str) -> list[tuple[str, str, str]]:
    """(cookie, priority and match, actions) of the bridge's flows, as OVS prints them."""
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge)
    return sorted(re.findall(r"cookie=(0x[0-9a-f]+), (priority=\S+) actions=(\S+)", out))


def expected_flows(flows) -> list[tuple[str, str, str]]:
    """``flows`` in ovs-ofctl syntax, as OVS parses and prints them back (``ovs-ofctl
    diff-flows`` cannot serve: it reports nw_frag flows as different even from themselves)."""
    with tempfile.NamedTemporaryFile("w", suffix=".flows") as f:
        f.write("".join(ofctl_flow(fl) + "\n" for fl in flows))
        f.flush()
        out = sh("ovs-ofctl", "-O", "OpenFlow13", "parse-flows", f.name)
    found = re.findall(r"ADD (priority=\S+) cookie:(0x[0-9a-f]+) actions=(\S+)", out)
    assert len(found) == len(flows), out
    return sorted((cookie, match, actions) for match, cookie, actions in found)


def datagram(src, dst, proto, sport, dport, ip_id, size=0) -> list[bytes]:
    """An IPv4 datagram of ``size`` payload bytes as Ethernet frames: fragments of at most
    1400 bytes of IP payload (one frame when it fits)."""
    from scapy.all import IP, TCP, UDP, Ether, fragment, raw
    l4 = UDP(sport=sport, dport=dport) if proto == 17 else TCP(sport=sport, dport=dport, flags="A")
    pkt = IP(src=src, dst=dst, id=ip_id) / l4 / (b"x" * size)
    frags = fragment(pkt, fragsize=1400) if len(pkt) > 1420 else [pkt]
    return [raw(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:02:01") / f) for f in frags]


class Tracer:
    def __init__(self, bridge: str):
        self.bridge = bridge
        self.dp_to_of = {int(dp): int(of) for of, dp in re.findall(
            rf"{bridge[:9]}p\d+ (\d+)/(\d+):", sh("ovs-appctl", "dpif/show"))}

    def __call__(self, in_port: int, frame: bytes) -> tuple[int | None, int, str]:
        """(the port a frame leaves on, None if dropped; the priority of the flow it matched;
        the trace's Flow line)."""
        out = sh("ovs-appctl", "ofproto/trace", self.bridge, f"in_port={in_port}", frame.hex())
        acts = re.search(r"Datapath actions: (\S+)", out).group(1)
        prio = int(re.search(r"^ 0\. .*priority (\d+)", out, re.M).group(1))
        flow = re.search(r"^Flow: (.*)$", out, re.M).group(1)
        return (None if acts == "drop" else self.dp_to_of[int(acts)]), prio, flow


def address_pairs(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        yield (rng, rng.choice([17, 17, 6]), f"10.0.1.{rng.randint(1, 250)}",
               f"10.0.2.{rng.randint(1, 250)}", rng.randint(1024, 65000),
               rng.choice([53, 5201, 4789, rng.randint(1, 65535)]))


def check_fragments_stay_together(trace, mode: str, n: int = 40, seed: int = 11) -> set[int]:
    """Every fragment of a datagram and of one going back (another IP ID) leaves on one port,
    through the fragment flow. Returns the ports used."""
    used = set()
    for rng, proto, a, b, pa, pb in address_pairs(n, seed):
        size = rng.randint(1500, 4200)
        fwd = datagram(a, b, proto, pa, pb, rng.randrange(1 << 16), size)
        back = datagram(b, a, proto, pb, pa, rng.randrange(1 << 16), rng.randint(1500, 4200))
        outs = []
        for in_port, frames in ((EDGES[0], fwd), (EDGES[1], back)):
            assert len(frames) >= 2
            for i, frame in enumerate(frames):
                port, prio, flow = trace(in_port, frame)
                assert ("nw_frag=first" if i == 0 else "nw_frag=later") in flow, flow
                assert prio == PRIO_STEER_FRAG, (mode, flow)
                outs.append(port)
        assert len(set(outs)) == 1 and outs[0] in PORTS, (mode, a, b, proto, pa, pb, outs)
        used.add(outs[0])
    return used


@pytest.mark.root
def test_fragments_of_a_datagram_reach_one_lb_node():
    """On a userspace bridge, the flows Gateway._set_steering sends (over a real OpenFlow
    connection): as steering_flows says; every fragment of a datagram (both directions, any
    fragment mode) leaves on one member port; unfragmented IPv4 keeps the 5-tuple choice the
    chain predicts; updates (a node leaves, none up) replace the flows."""
    sh("ovs-vsctl", "--if-exists", "del-br", BRIDGE)
    conn = None
    try:
        sh("ovs-vsctl", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE,
           "datapath_type=netdev", "fail-mode=secure")
        for port in (*EDGES, *(p for p in PORTS if p != EMPTY_SLOT_PORT)):
            name = f"{BRIDGE[:9]}p{port}"
            sh("ovs-vsctl", "add-port", BRIDGE, name, "--", "set", "interface", name,
               "type=internal", f"ofport_request={port}")
            sh("ip", "link", "set", name, "up")     # a down member is skipped
        conn = OpenFlowConn(BRIDGE)
        gw = gateway_on(conn)

        def steer(lb_ports):
            gw._set_steering(SetSteering(EDGES, lb_ports))
            assert conn.barrier() == []
            assert installed_flows(BRIDGE) == expected_flows(steering_flows(EDGES, lb_ports))

        steer(PORTS)
        print(sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", BRIDGE))
        trace = Tracer(BRIDGE)
        live = [i for i, port in enumerate(PORTS) if port != EMPTY_SLOT_PORT]

        # Unfragmented IPv4: the 5-tuple hash (the chain's oracle), so connections between
        # the same two hosts spread over the members.
        spread = 0
        for rng, proto, a, b, pa, pb in address_pairs(40, seed=12):
            outs = set()
            for sport in (pa, pa + 1, pa + 2, pa + 3):
                port, prio, _ = trace(EDGES[0], datagram(a, b, proto, sport, pb, 1, 100)[0])
                assert prio == PRIO_STEER
                assert port == PORTS[choice(flow_key(a, b, proto, sport, pb), live)]
                outs.add(port)
            spread += len(outs) > 1
        assert spread >= 30, spread

        # Fragments, in the default mode (OVS zeroes every fragment's ports) and in nx-match
        # (a first fragment keeps its ports).
        assert sh("ovs-ofctl", "get-frags", BRIDGE).strip() == "normal"
        assert len(check_fragments_stay_together(trace, "normal")) >= 3
        sh("ovs-ofctl", "set-frags", BRIDGE, "nx-match")
        assert len(check_fragments_stay_together(trace, "nx-match")) >= 3

        # Control: the check catches a fragment flow that is not symmetric.
        members = ",".join(map(str, PORTS))
        for port in EDGES:
            sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", BRIDGE,
               f"cookie={COOKIE:#x},priority={PRIO_STEER_FRAG},ip,in_port={port},nw_frag=yes,"
               f"actions=bundle(nw_src,0,hrw,ofport,members:{members})")
        with pytest.raises(AssertionError, match=r"\('nx-match', '10\.0\."):  # a split, not a flow
            check_fragments_stay_together(trace, "nx-match")

        # Updates: the next steering restores the fragment flows, a node leaving, then none up.
        steer(PORTS)
        steer((2, EMPTY_SLOT_PORT, EMPTY_SLOT_PORT, 4, 5))
        assert check_fragments_stay_together(trace, "nx-match", n=10) <= {2, 4, 5}
        steer(())
        for frame in datagram("10.0.1.1", "10.0.2.2", 17, 1000, 2000, 7, 3000):
            port, prio, _ = trace(EDGES[0], frame)
            assert port is None and prio == PRIO_STEER_FRAG
        port, prio, _ = trace(EDGES[0], datagram("10.0.1.1", "10.0.2.2", 17, 1000, 2000, 7)[0])
        assert port is None and prio == PRIO_STEER
    finally:
        if conn is not None:
            conn.close()
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BRIDGE], capture_output=True)
