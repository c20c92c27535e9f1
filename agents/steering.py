"""The gateway's steering function, computed where the chain needs it.

The gateway spreads connections over the LB nodes with Open vSwitch's ``bundle`` action:
``bundle(symmetric_l3l4+udp, 0, hrw, ofport, members:P1,P2,...)``, the LB ports in
ascending order. For each member index ``i`` OVS scores ``hash_2words(i, flow_hash)`` and the
highest score wins, where ``flow_hash`` is ``flow_hash_symmetric_l3l4`` (basis 0) of the
packet: the XOR of the two IPv4 addresses, the protocol, and the XOR of the two ports, mixed
with the murmur3-style ``hash_add`` / ``hash_finish`` of OVS's ``lib/hash.h`` (the portable
build; an OVS built with SSE 4.2 uses CRC32 instead). Fields are taken as OVS holds them:
network byte order, read as little-endian words.

``score`` ranks the LB nodes as the gateway does for a connection key, so the chain can make
the LB node a new connection arrives at the head of its chain. A root test checks the
choice against ``ovs-appctl ofproto/trace`` on a live bridge.
"""
from __future__ import annotations

__all__ = ["flow_hash", "score"]

_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _add(h: int, data: int) -> int:
    if data:
        data = (data * 0xCC9E2D51) & _M
        data = (_rot(data, 15) * 0x1B873593) & _M
        h ^= data
    return (_rot(h, 13) * 5 + 0xE6546B64) & _M


def _finish(h: int, final: int) -> int:
    h ^= final
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M
    return h ^ (h >> 16)


def flow_hash(key: bytes) -> int | None:
    """OVS's symmetric L3/L4 hash (with UDP ports) of an IPv4 connection key; None otherwise."""
    if len(key) != 13:
        return None
    proto = key[0]
    addrs = int.from_bytes(key[1:5], "little") ^ int.from_bytes(key[7:11], "little")
    h = _add(_add(0, addrs), proto)
    if proto in (6, 17, 132):
        h = _add(h, int.from_bytes(key[5:7], "little") ^ int.from_bytes(key[11:13], "little"))
    return _finish(h, 0)


def score(index: int, fh: int) -> int:
    """The score of bundle member ``index`` for a packet of flow hash ``fh``; highest wins
    (among equal scores, the lowest index)."""
    return _finish(_add(_add(index, 0), fh), 8)
