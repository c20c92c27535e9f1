"""Health probes that cross an NF (pure: frame bytes in and out, no I/O).

The controller sends each NF, through the gateway, a UDP datagram from ``PROBE_SRC`` to
``PROBE_DST`` (``probe_frame``), addressed to the NF's MAC as an LB node's forwarded packet
is. ``PROBE_DST`` is on-link in the testbed's 10.0.0.0/16, and every NF host has a static
neighbour entry mapping it to the controller's MAC (``topo.testbed.arp_entries``), so an NF
that forwards routes the datagram back out of its interface to the gateway, whose flow sends
it to the controller (``ryu_apps.gateway``), where ``parse_probe`` reads it. An NF host with
forwarding off (its service dead, ``ip_forward`` 0) still answers pings of its own address,
but never returns a probe: what the probe proves is the forwarding path the connections use.

The NF's firewall accepts new UDP, and its ruleset lets probes through before it counts
anything (``agents.nf``), so they never appear among the connections it saw.
"""
from __future__ import annotations

import ipaddress
import struct

__all__ = ["PROBE_SRC", "PROBE_DST", "PROBE_PORT", "probe_frame", "parse_probe"]

PROBE_SRC = "10.0.255.253"
PROBE_DST = "10.0.255.254"
PROBE_PORT = 9                 # UDP discard: nothing in the testbed listens or sends there
_MAGIC = b"CLBprobe"
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_BODY = struct.Struct("!8sQ")   # magic, sequence number; then the NF's name


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def probe_frame(dst_mac: bytes, src_mac: bytes, nf: str, seq: int) -> bytes:
    """The Ethernet frame of probe ``seq`` for NF ``nf`` (to its MAC ``dst_mac``)."""
    payload = _BODY.pack(_MAGIC, seq) + nf.encode()
    udp = _UDP.pack(PROBE_PORT, PROBE_PORT, _UDP.size + len(payload), 0) + payload
    total = _IP.size + len(udp)
    hdr = _IP.pack(0x45, 0, total, 0, 0x4000, 64, 17, 0,
                   ipaddress.IPv4Address(PROBE_SRC).packed,
                   ipaddress.IPv4Address(PROBE_DST).packed)
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return dst_mac + src_mac + b"\x08\x00" + hdr + udp


def parse_probe(frame: bytes) -> tuple[str, int] | None:
    """(NF name, sequence number) of a returned probe; None for any other frame."""
    if len(frame) < 14 + _IP.size + _UDP.size + _BODY.size or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14] >> 4 != 4 or ihl < 20 or frame[23] != 17:
        return None
    if frame[26:30] != ipaddress.IPv4Address(PROBE_SRC).packed or \
            frame[30:34] != ipaddress.IPv4Address(PROBE_DST).packed:
        return None
    udp = 14 + ihl
    if len(frame) < udp + _UDP.size + _BODY.size:
        return None
    if struct.unpack_from("!H", frame, udp + 2)[0] != PROBE_PORT:
        return None
    magic, seq = _BODY.unpack_from(frame, udp + _UDP.size)
    if magic != _MAGIC:
        return None
    length = struct.unpack_from("!H", frame, udp + 4)[0]
    name = frame[udp + _UDP.size + _BODY.size:udp + length]
    try:
        return name.decode(), seq
    except UnicodeDecodeError:
        return None
