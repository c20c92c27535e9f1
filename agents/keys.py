"""Canonical connection keys.

A key names one connection, whatever the direction of the packet: the two endpoints
(packed address, port) are put in ascending order. Layout, all big-endian::

    proto (1) | ip_lo (4 or 16) | port_lo (2) | ip_hi (4 or 16) | port_hi (2)

so an IPv4 key is 13 bytes and an IPv6 key 37 bytes.
"""
from __future__ import annotations

import ipaddress
import struct

__all__ = ["flow_key", "flow_key_raw", "key_fields", "key_str", "PROTO_NAMES"]

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}

_KEY_LEN = {13: 4, 37: 16}  # key length -> address length


def _packed(ip: str, what: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed
    except (ValueError, TypeError):
        raise ValueError(f"{what}: not an IP address: {ip!r}") from None


def _check_range(value: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ValueError(f"{what} must be an integer in 0..{hi}, got {value!r}")


def flow_key(src_ip: str, dst_ip: str, proto: int, sport: int, dport: int) -> bytes:
    """Key of a connection from its 5-tuple; symmetric in (src, sport) <-> (dst, dport)."""
    src = _packed(src_ip, "source")
    dst = _packed(dst_ip, "destination")
    if len(src) != len(dst):
        raise ValueError(f"mixed address families: {src_ip} and {dst_ip}")
    _check_range(proto, 255, "proto")
    _check_range(sport, 65535, "source port")
    _check_range(dport, 65535, "destination port")
    return flow_key_raw(src, dst, proto, sport, dport)


_PACK = {4: struct.Struct("!B4sH4sH").pack, 16: struct.Struct("!B16sH16sH").pack}


def flow_key_raw(src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> bytes:
    """``flow_key`` from packed addresses (``bytes``, both 4 or both 16 long).

    Runs per packet on the LB data path, so it checks nothing: the two addresses of one
    IP header always have the same length.
    """
    if src < dst or (src == dst and sport <= dport):
        return _PACK[len(src)](proto, src, sport, dst, dport)
    return _PACK[len(src)](proto, dst, dport, src, sport)


def key_fields(key: bytes) -> tuple[str, int, str, int, int]:
    """(ip_lo, port_lo, ip_hi, port_hi, proto) of a key."""
    alen = _KEY_LEN.get(len(key)) if isinstance(key, (bytes, bytearray)) else None
    if alen is None:
        raise ValueError(f"not a flow key (13 or 37 bytes expected): {key!r}")
    ip_lo = ipaddress.ip_address(bytes(key[1:1 + alen]))
    port_lo = int.from_bytes(key[1 + alen:3 + alen], "big")
    ip_hi = ipaddress.ip_address(bytes(key[3 + alen:3 + 2 * alen]))
    port_hi = int.from_bytes(key[3 + 2 * alen:], "big")
    return str(ip_lo), port_lo, str(ip_hi), port_hi, key[0]


def key_str(key: bytes) -> str:
    """Readable form, e.g. ``tcp 10.0.1.1:5001<->10.0.2.1:5201``."""
    ip_lo, port_lo, ip_hi, port_hi, proto = key_fields(key)
    name = PROTO_NAMES.get(proto, f"proto{proto}")
    if ":" in ip_lo:
        return f"{name} [{ip_lo}]:{port_lo}<->[{ip_hi}]:{port_hi}"
    return f"{name} {ip_lo}:{port_lo}<->{ip_hi}:{port_hi}"
