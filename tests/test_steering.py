"""The gateway's steering function (agents.steering) against Open vSwitch itself."""
from __future__ import annotations

import random
import re
import subprocess
from collections import Counter

import pytest

from agents.keys import flow_key
from agents.steering import flow_hash, score
from ryu_apps.policy import EMPTY_SLOT_PORT

BRIDGE = "chainlbhash"
# the bundle's members in the order the gateway lists them, with an empty slot
PORTS = (2, EMPTY_SLOT_PORT, 3, 4, 5)


def choice(key: bytes, slots) -> int:
    """The member index OVS's bundle picks: the highest score, the first among equals; an
    empty slot keeps its index but is never picked."""
    fh = flow_hash(key)
    return max(slots, key=lambda i: (score(i, fh), -i))


def random_tuples(n: int, seed: int = 1):
    rng = random.Random(seed)
    for _ in range(n):
        proto = rng.choice([6, 17])
        src, dst = f"10.0.1.{rng.randint(1, 250)}", f"10.0.2.{rng.randint(1, 250)}"
        sport, dport = rng.randint(1024, 65535), rng.choice([80, 5201, rng.randint(1, 65535)])
        if rng.random() < 0.5:
            src, dst, sport, dport = dst, src, dport, sport
        yield proto, src, dst, sport, dport


def test_flow_hash_is_only_for_ipv4_keys_and_symmetric():
    k = flow_key("10.0.1.1", "10.0.2.1", 6, 40000, 5201)
    assert flow_hash(k) == flow_hash(flow_key("10.0.2.1", "10.0.1.1", 6, 5201, 40000))
    assert flow_hash(flow_key("fd00::1", "fd00::2", 6, 1, 2)) is None
    assert flow_hash(b"short") is None
    # ports count for TCP and UDP
    assert flow_hash(k) != flow_hash(flow_key("10.0.1.1", "10.0.2.1", 6, 40001, 5201))
    assert flow_hash(flow_key("10.0.1.1", "10.0.2.1", 17, 1, 2)) != \
        flow_hash(flow_key("10.0.1.1", "10.0.2.1", 17, 1, 3))


def test_choices_spread_over_the_members():
    counts = Counter(choice(flow_key(s, d, p, sp, dp), range(4)) for p, s, d, sp, dp in
                     random_tuples(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 800, counts


@pytest.mark.root
def test_the_choice_is_the_one_open_vswitch_makes():
    """ofproto/trace on a userspace bridge with the gateway's bundle action, one of whose
    slots lists a port the bridge does not have (a node that is not up)."""
    def sh(*args):
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    sh("ovs-vsctl", "--if-exists", "del-br", BRIDGE)
    try:
        sh("ovs-vsctl", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE,
           "datapath_type=netdev", "fail-mode=secure")
        live = [i for i, port in enumerate(PORTS) if port != EMPTY_SLOT_PORT]
        for port in (1, *(PORTS[i] for i in live)):
            sh("ovs-vsctl", "add-port", BRIDGE, f"{BRIDGE[:9]}p{port}", "--", "set",
               "interface", f"{BRIDGE[:9]}p{port}", "type=internal", f"ofport_request={port}")
            sh("ip", "link", "set", f"{BRIDGE[:9]}p{port}", "up")     # a down member is skipped
        members = ",".join(map(str, PORTS))
        sh("ovs-ofctl", "add-flow", BRIDGE,
           f"in_port=1,ip,actions=bundle(symmetric_l3l4+udp,0,hrw,ofport,members:{members})")
        dp_to_of = {int(dp): int(of) for of, dp in
                    re.findall(rf"{BRIDGE[:9]}p\d+ (\d+)/(\d+):", sh("ovs-appctl", "dpif/show"))}
        for proto, src, dst, sport, dport in random_tuples(60, seed=7):
            name = {6: "tcp", 17: "udp"}[proto]
            out = sh("ovs-appctl", "ofproto/trace", BRIDGE,
                     f"in_port=1,{name},nw_src={src},nw_dst={dst},"
                     f"{name}_src={sport},{name}_dst={dport}")
            dp = int(re.search(r"Datapath actions: (\d+)", out).group(1))
            key = flow_key(src, dst, proto, sport, dport)
            assert PORTS[choice(key, live)] == dp_to_of[dp], (src, dst, proto, sport, dport)
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BRIDGE], capture_output=True)
