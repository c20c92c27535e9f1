"""Topology building from parameters (no Mininet started, no root needed)."""
from __future__ import annotations

import pytest

from topo import testbed as tb
from topo.testbed import TestbedParams


def test_addresses_follow_the_plan():
    assert tb.mac_of("nf1") == "02:00:00:00:04:01"
    assert tb.mac_of("c12") == "02:00:00:00:01:0c"
    assert tb.mac_of("lb200") == "02:00:00:00:03:c8"
    assert tb.ip_of("c12") == "10.0.1.12"
    assert tb.ip_of("s2") == "10.0.2.2"
    assert tb.ip_of("lb3") == "10.0.3.3"
    assert tb.ip_of("nf4") == "10.0.4.4"
    assert [tb.kind_of(n) for n in ("c1", "s1", "lb1", "nf1", "gw")] == \
        ["client", "server", "lb", "nf", "switch"]
    assert tb.intf_of("nf2") == "nf2-eth0"
    assert tb.port_number("c1") == 1001 and tb.port_number("nf2") == 4002
    assert tb.switch_intf_of("lb4") == "gw-eth3004"
    assert tb.name_of_ip("10.0.4.3") == "nf3" and tb.name_of_ip("10.0.9.1") is None
    assert tb.name_of_ip("192.168.0.1") is None
    assert tb.cluster_mac_of("lb2") == "02:00:00:01:03:02"
    assert tb.cluster_intf_of("lb2") == "lb2-eth1"
    assert tb.cluster_port_of("lb2") == "chainlb0-lb2"


@pytest.mark.parametrize("name", ["nf1", "c1", "s3"])
def test_only_lb_nodes_are_on_the_cluster_network(name):
    for fn in (tb.cluster_mac_of, tb.cluster_intf_of, tb.cluster_port_of):
        with pytest.raises(ValueError, match="not an LB node"):
            fn(name)


def test_every_planned_name_has_unique_addresses_and_ports():
    names = tb.planned_hosts(TestbedParams(clients=200, servers=200, lbs=100, spare_lbs=100,
                                           nfs=150, spare_nfs=50))
    assert len(names) == 800
    for fn in (tb.mac_of, tb.ip_of, tb.port_number):
        values = [fn(n) for n in names]
        assert len(set(values)) == len(values), fn.__name__
    assert all(tb.name_of_ip(tb.ip_of(n)) == n for n in names)
    assert all(len(tb.switch_intf_of(n)) <= 15 and len(tb.intf_of(n)) <= 15 for n in names)
    lbs = [n for n in names if tb.kind_of(n) == "lb"]
    cluster = [tb.cluster_mac_of(n) for n in lbs]
    assert len(set(cluster)) == len(lbs) and not set(cluster) & {tb.mac_of(n) for n in names}
    assert all(len(tb.cluster_port_of(n)) <= 15 and len(tb.cluster_intf_of(n)) <= 15
               for n in lbs)


@pytest.mark.parametrize("bad", ["", "x1", "nf0", "nf01", "nf201", "gw", "lb", "c-1", "NF1"])
def test_bad_names_are_rejected(bad):
    with pytest.raises(ValueError, match="not a testbed host name"):
        tb.parse_name(bad)


def test_default_params_and_hosts():
    p = TestbedParams().validate()
    assert (p.clients, p.servers, p.lbs, p.nfs, p.spare_nfs, p.spare_lbs, p.chain_len) == \
        (4, 2, 4, 3, 1, 1, 3)
    assert tb.initial_hosts(p) == ["c1", "c2", "c3", "c4", "s1", "s2", "lb1", "lb2", "lb3",
                                   "lb4", "nf1", "nf2", "nf3"]
    assert tb.spare_hosts(p) == ["lb5", "nf4"]


@pytest.mark.parametrize("kwargs,field", [
    ({"clients": 0}, "clients=0"), ({"servers": 201}, "servers=201"),
    ({"lbs": 0}, "lbs=0"), ({"nfs": -1}, "nfs=-1"), ({"spare_nfs": -1}, "spare_nfs=-1"),
    ({"nfs": 150, "spare_nfs": 51}, "nfs+spare_nfs=201"),
    ({"chain_len": 0}, "chain_len=0"), ({"chain_len": 5, "lbs": 4}, "chain_len=5"),
    ({"bw_mbit": 0}, "bw_mbit=0"), ({"bw_mbit": 20000}, "bw_mbit=20000"),
    ({"clients": True}, "clients=True"),
])
def test_validate_names_the_bad_field_and_the_limits(kwargs, field):
    with pytest.raises(ValueError) as err:
        TestbedParams(**kwargs).validate()
    assert field in str(err.value) and "limits:" in str(err.value)


def test_validate_lists_every_bad_field():
    with pytest.raises(ValueError) as err:
        TestbedParams(clients=0, nfs=0, chain_len=9).validate()
    msg = str(err.value)
    assert "clients=0" in msg and "nfs=0" in msg and "chain_len=9" in msg


def test_from_mapping_parses_strings_and_rejects_unknown_keys():
    p = TestbedParams.from_mapping({"clients": "8", "bw_mbit": "50", "chain_len": "2"})
    assert p == TestbedParams(clients=8, bw_mbit=50.0, chain_len=2)
    assert TestbedParams.from_mapping({"bw_mbit": ""}).bw_mbit is None
    with pytest.raises(ValueError, match="unknown testbed parameter.*valid: clients"):
        TestbedParams.from_mapping({"clinets": 3})
    with pytest.raises(ValueError, match="not a number"):
        TestbedParams.from_mapping({"nfs": "three"})
    with pytest.raises(ValueError, match="lbs=0"):
        TestbedParams.from_mapping({"lbs": "0", "chain_len": "1"})
    assert TestbedParams().asdict()["spare_nfs"] == 1


def test_next_free_name_fills_gaps():
    assert tb.next_free_name(["nf1", "nf2", "nf3", "c1", "gw"], "nf") == "nf4"
    assert tb.next_free_name(["lb1", "lb3"], "lb") == "lb2"
    assert tb.next_free_name([], "client") == "c1"
    with pytest.raises(ValueError, match="unknown host kind"):
        tb.next_free_name([], "router")


def test_arp_entries_skip_self():
    assert tb.arp_entries("c1", ["c1", "nf1", "s2"]) == [
        ("10.0.4.1", "02:00:00:00:04:01"), ("10.0.2.2", "02:00:00:00:02:02")]


def test_nf_hosts_send_health_probes_back_to_the_controller():
    from ryu_apps.policy import CONTROLLER_MAC
    from ryu_apps.probe import PROBE_DST
    assert tb.arp_entries("nf2", ["c1"]) == [("10.0.1.1", "02:00:00:00:01:01"),
                                             (PROBE_DST, CONTROLLER_MAC)]
    assert (PROBE_DST, CONTROLLER_MAC) not in tb.arp_entries("lb1", ["c1"])


# --- the Mininet Topo (graph only) -------------------------------------------------------

def test_topo_has_initial_hosts_one_switch_and_fixed_ports():
    from mininet.link import TCULink
    from mininet.node import OVSSwitch
    p = TestbedParams(clients=3, servers=2, lbs=2, nfs=2, spare_nfs=2, chain_len=2)
    topo = tb.TestbedTopo(p)
    assert topo.switches() == ["gw"]
    assert sorted(topo.hosts()) == sorted(["c1", "c2", "c3", "s1", "s2", "lb1", "lb2",
                                           "nf1", "nf2"])
    sw = topo.nodeInfo("gw")
    assert sw["cls"] is OVSSwitch and sw["datapath"] == "user"
    assert sw["protocols"] == "OpenFlow13" and sw["dpid"] == "0000000000000001"
    for name in topo.hosts():
        info = topo.nodeInfo(name)
        assert info["ip"] == f"{tb.ip_of(name)}/16" and info["mac"] == tb.mac_of(name)
    links = topo.links(withInfo=True)
    assert len(links) == 9
    for a, b, info in links:
        host = a if b == "gw" else b
        assert "gw" in (a, b) and host != "gw"
        assert info["cls"] is TCULink
        ports = {info["node1"]: info["port1"], info["node2"]: info["port2"]}
        assert ports["gw"] == tb.port_number(host) and ports[host] == 0
        assert "bw" not in info


def test_topo_bandwidth_only_on_client_and_server_links():
    topo = tb.TestbedTopo(TestbedParams(clients=1, servers=1, lbs=1, nfs=1, chain_len=1,
                                        bw_mbit=100))
    bws = {(a if b == "gw" else b): info.get("bw") for a, b, info in topo.links(withInfo=True)}
    assert bws == {"c1": 100, "s1": 100, "lb1": None, "nf1": None}


def test_topo_rejects_bad_params():
    with pytest.raises(ValueError, match="chain_len"):
        tb.TestbedTopo(TestbedParams(lbs=2, chain_len=3))
