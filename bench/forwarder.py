"""The bare AF_PACKET forwarder, the baseline of ``datapath_pps``.

    python -m bench.forwarder --intf lb1-eth0 --dst-mac 02:00:00:00:04:01 \
        --warmup 1 --duration 3 --out fwd.json

It does the least an LB node must: receive an IPv4 frame, rewrite the destination MAC (and
the source MAC to its own, as the LB agent does) and send it back out of the same interface.
It counts the frames it forwards within the window ``[start + warmup, start + warmup +
duration)`` and writes ``{"forwarded", "window_s", "pps", "total"}`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23


def forward(intf: str, dst_mac: bytes, warmup: float, duration: float) -> dict:
    """Forward IPv4 frames until the window is over; return the counts.

    The I/O is the LB agent's, without its logic: wait in ``select``, then receive and send
    until the socket is empty (at most 512 frames per wake-up).
    """
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((intf, 0))
    s.setblocking(False)
    head = dst_mac + s.getsockname()[4][:6]
    recv, send, sel = s.recv, s.send, select.select
    t0 = time.monotonic()
    start, end = t0 + warmup, t0 + warmup + duration
    total = 0
    at_start = t_start = None
    while True:
        now = time.monotonic()
        if at_start is None and now >= start:
            at_start, t_start = total, now
        if now >= end:
            break
        if not sel([s], [], [], min(0.05, end - now))[0]:
            continue
        for _ in range(512):
            try:
                buf = recv(65535)
            except BlockingIOError:
                break
            if buf[12:14] == b"\x08\x00":
                send(head + buf[12:])
                total += 1
    window = max(now - t_start, 1e-9)
    return {"forwarded": total - at_start, "window_s": window,
            "pps": (total - at_start) / window, "total": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.forwarder", description=__doc__.split("\n\n")[0])
    p.add_argument("--intf", required=True)
    p.add_argument("--dst-mac", required=True, help="the next hop's MAC (e.g. an NF's)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        mac = bytes.fromhex(a.dst_mac.replace(":", ""))
        if len(mac) != 6:
            raise ValueError
    except ValueError:
        p.error(f"--dst-mac: not a MAC address: {a.dst_mac!r}")
    if a.duration <= 0 or a.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    try:
        doc = forward(a.intf, mac, a.warmup, a.duration)
    except OSError as e:
        print(f"bench.forwarder: error: {e}", file=sys.stderr)
        return 1
    with open(a.out, "w") as f:
        json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
