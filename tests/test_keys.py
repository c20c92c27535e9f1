"""Canonical connection keys (agents.keys)."""
import ipaddress

import pytest
from hypothesis import given, strategies as st

from agents.keys import flow_key, flow_key_raw, key_fields, key_str

ports = st.integers(0, 65535)
protos = st.integers(0, 255)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


def test_ipv4_layout():
    key = flow_key("10.0.2.1", "10.0.1.1", 6, 5201, 5001)
    assert key == bytes([6, 10, 0, 1, 1, 0x13, 0x89, 10, 0, 2, 1, 0x14, 0x51])
    assert len(key) == 13


def test_ipv6_layout():
    key = flow_key("2001:db8::2", "2001:db8::1", 17, 53, 40000)
    lo = ipaddress.ip_address("2001:db8::1").packed
    hi = ipaddress.ip_address("2001:db8::2").packed
    assert key == bytes([17]) + lo + (40000).to_bytes(2, "big") + hi + (53).to_bytes(2, "big")
    assert len(key) == 37


def test_same_address_orders_by_port():
    assert flow_key("10.0.0.1", "10.0.0.1", 6, 9, 7) == bytes([6, 10, 0, 0, 1, 0, 7, 10, 0, 0, 1, 0, 9])


@given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), protos, ports, ports)
def test_symmetric_and_matches_raw(ips, proto, sport, dport):
    a, b = ips
    key = flow_key(a, b, proto, sport, dport)
    assert key == flow_key(b, a, proto, dport, sport)
    pa, pb = ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed
    assert flow_key_raw(pa, pb, proto, sport, dport) == key
    assert flow_key_raw(pb, pa, proto, dport, sport) == key
    lo, hi = sorted([(ipaddress.ip_address(a), sport), (ipaddress.ip_address(b), dport)])
    assert key_fields(key) == (str(lo[0]), lo[1], str(hi[0]), hi[1], proto)


@given(v4, v4, ports, ports, ports, ports)
def test_distinct_connections_distinct_keys(a, b, p1, p2, p3, p4):
    if {(a, p1), (b, p2)} != {(a, p3), (b, p4)}:
        assert flow_key(a, b, 6, p1, p2) != flow_key(a, b, 6, p3, p4)


def test_protocol_is_part_of_the_key():
    assert flow_key("10.0.1.1", "10.0.2.1", 6, 1, 2) != flow_key("10.0.1.1", "10.0.2.1", 17, 1, 2)


@pytest.mark.parametrize("args, message", [
    (("10.0.1", "10.0.2.1", 6, 1, 2), "not an IP address"),
    (("10.0.1.1", "nope", 6, 1, 2), "not an IP address"),
    ((None, "10.0.2.1", 6, 1, 2), "not an IP address"),
    (("10.0.1.1", "::1", 6, 1, 2), "mixed address families"),
    (("10.0.1.1", "10.0.2.1", 256, 1, 2), "proto"),
    (("10.0.1.1", "10.0.2.1", -1, 1, 2), "proto"),
    (("10.0.1.1", "10.0.2.1", 6, 65536, 2), "source port"),
    (("10.0.1.1", "10.0.2.1", 6, 1, -2), "destination port"),
    (("10.0.1.1", "10.0.2.1", 6, 1.5, 2), "source port"),
    (("10.0.1.1", "10.0.2.1", True, 1, 2), "proto"),
])
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        flow_key(*args)


def test_key_str():
    assert key_str(flow_key("10.0.2.1", "10.0.1.1", 6, 5201, 5001)) == "tcp 10.0.1.1:5001<->10.0.2.1:5201"
    assert key_str(flow_key("::2", "::1", 17, 1, 2)) == "udp [::1]:2<->[::2]:1"
    assert key_str(flow_key("10.0.0.1", "10.0.0.2", 99, 0, 0)) == "proto99 10.0.0.1:0<->10.0.0.2:0"


@pytest.mark.parametrize("bad", [b"", b"x" * 12, b"x" * 14, b"x" * 36, "not bytes", None])
def test_key_fields_rejects_non_keys(bad):
    with pytest.raises(ValueError, match="not a flow key"):
        key_fields(bad)
