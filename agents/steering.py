"""The gateway's steering function, computed where the chain needs it.

The gateway spreads connections over the LB nodes with Open vSwitch's ``bundle`` action:
``bundle(symmetric_l3l4+udp, 0, hrw, ofport, members:P1,P2,...)``, the LB ports in their
slots (``ryu_apps.policy``; a slot whose node is not up lists a port the switch does not
have, which OVS skips, keeping the others' indices). For each member index ``i`` OVS scores
``hash_2words(i, flow_hash)`` and the highest score wins, where ``flow_hash`` is
``flow_hash_symmetric_l3l4`` (basis 0) of the packet: the XOR of the two IPv4 addresses, the
protocol, and the XOR of the two ports, mixed with the murmur3-style ``hash_add`` /
``hash_finish`` of OVS's ``lib/hash.h`` (the portable build; an OVS built with SSE 4.2 uses
CRC32 instead). Fields are taken as OVS holds them: network byte order, read as
little-endian words.

``score`` ranks the LB nodes as the gateway does for a connection key, so the chain can make
the LB node a new connection arrives at the head of its chain. A root test checks the
choice against ``ovs-appctl ofproto/trace`` on a live bridge.

IPv4 fragments (first and later) are steered by a flow of their own that hashes the two
addresses only (``bundle(symmetric_l3, ...)``, same members, HRW), so all fragments of a
datagram reach one LB node. The chain's placement, which follows the 5-tuple hash above, does
not apply to them: the LB node they reach looks the connection up like any other asker.
"""
from __future__ import annotations

import struct

__all__ = ["flow_hash", "seed", "scores", "score"]

_M = 0xFFFFFFFF
_KEY4 = struct.Struct("<BIHIH")    # an IPv4 key's fields, read as OVS reads them (see above)


def _mix(data: int) -> int:
    """What ``hash_add`` XORs into the hash for a data word (0 for 0: the hash is kept)."""
    data = (data * 0xCC9E2D51) & _M
    return ((((data << 15) | (data >> 17)) & _M) * 0x1B873593) & _M


def _step(h: int) -> int:
    """What ``hash_add`` does to the hash once the data word is XORed in."""
    return ((((h << 13) | (h >> 19)) & _M) * 5 + 0xE6546B64) & _M


def _add(h: int, data: int) -> int:
    return _step(h ^ _mix(data))


def _finish(h: int, final: int) -> int:
    h ^= final
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _M
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _M
    return h ^ (h >> 16)


def flow_hash(key: bytes) -> int | None:
    """OVS's symmetric L3/L4 hash (with UDP ports) of an IPv4 connection key; None otherwise."""
    if len(key) != 13:
        return None
    proto, addr_lo, port_lo, addr_hi, port_hi = _KEY4.unpack(key)
    h = _add(_add(0, addr_lo ^ addr_hi), proto)
    if proto in (6, 17, 132):
        h = _add(h, port_lo ^ port_hi)
    return _finish(h, 0)


def seed(index: int) -> int:
    """Member ``index``'s half of OVS's ``hash_2words(index, flow_hash)``: fixed per member."""
    return _add(index, 0)


def scores(fh: int, seeds) -> list[int]:
    """The scores of the members of ``seeds`` for a packet of flow hash ``fh``."""
    mixed = _mix(fh)       # hash_2words(i, fh) = _finish(_add(seed(i), fh), 8)
    return [_finish(_step(member_seed ^ mixed), 8) for member_seed in seeds]


def score(index: int, fh: int) -> int:
    """The score of bundle member ``index`` for a packet of flow hash ``fh``; highest wins
    (among equal scores, the lowest index)."""
    return scores(fh, [seed(index)])[0]
