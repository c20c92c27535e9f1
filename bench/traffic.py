"""Traffic tools the testbed benchmark runs inside Mininet hosts: ``python -m bench.traffic``.

Every tool runs for a bounded time and writes one JSON document to ``--out``. Times are
``time.monotonic()``, which every network namespace shares with the benchmark itself.

- ``flood``: one UDP 5-tuple as fast as possible from an AF_PACKET socket (datapath_pps).
- ``spray``: one UDP packet per distinct 5-tuple, paced (entries_held).
- ``probe-send`` / ``probe-recv``: UDP flows with sequence numbers every few ms
  (lb_kill_restore_s).
- ``server``: TCP listeners that accept and close.
- ``connect``: sequential TCP connects, each timed (connect_ms_*).
- ``rate``: new TCP connections on an open-loop schedule at a given rate (setup_rate_cps,
  nf_add_first_flow_s).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
_LINGER_RST = struct.pack("ii", 1, 0)       # close with RST: no TIME_WAIT on the client
_PROBE = struct.Struct("!IId")              # flow index, sequence number, send time


def mac_bytes(mac: str) -> bytes:
    # not agents.wire.mac_bytes: these host-side tools start fast without importing scapy
    return bytes.fromhex(mac.replace(":", ""))


def ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(dst_mac: bytes, src_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4/UDP frame (valid IP checksum, UDP checksum 0), padded to 60 bytes."""
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    frame = dst_mac + src_mac + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    return frame.ljust(60, b"\0")


def spray_tuple(i: int, sport_base: int, sport_span: int, dport_base: int) -> tuple[int, int]:
    """(sport, dport) of the i-th distinct 5-tuple of a spray."""
    return sport_base + i % sport_span, dport_base + i // sport_span


def _raw_socket(intf: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((intf, 0))
    return s


def _write(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


# --- tools -----------------------------------------------------------------------------

def flood(a) -> dict:
    s = _raw_socket(a.intf)
    frame = udp_frame(mac_bytes(a.dst_mac), s.getsockname()[4][:6], a.src_ip, a.dst_ip,
                      a.sport, a.dport, b"x" * max(0, a.size - 42))
    send, n, errors = s.send, 0, 0
    t0 = time.monotonic()
    end = t0 + a.duration
    while True:
        for _ in range(256):
            try:
                send(frame)
            except OSError:              # ENOBUFS: the queue is full for a moment
                errors += 1
        n += 256
        now = time.monotonic()
        if now >= end:
            break
        if a.rate:                       # paced: sleep until this batch is due
            ahead = t0 + n / a.rate - now
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.monotonic() - t0
    return {"tool": "flood", "sent": n - errors, "send_errors": errors, "t0": t0,
            "elapsed_s": elapsed, "frame_bytes": len(frame)}


def spray(a) -> dict:
    s = _raw_socket(a.intf)
    dst, src = mac_bytes(a.dst_mac), s.getsockname()[4][:6]
    head = udp_frame(dst, src, a.src_ip, a.dst_ip, 0, 0)
    t0 = time.monotonic()
    batch = max(1, int(a.rate / 100))      # 100 batches a second
    sent = errors = 0
    for start in range(a.offset, a.offset + a.count, batch):
        due = t0 + (start - a.offset) / a.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for i in range(start, min(start + batch, a.offset + a.count)):
            sport, dport = spray_tuple(i, a.sport_base, a.sport_span, a.dport_base)
            frame = head[:34] + struct.pack("!HH", sport, dport) + head[38:]
            try:
                s.send(frame)
                sent += 1
            except OSError:
                errors += 1
    return {"tool": "spray", "sent": sent, "send_errors": errors, "t0": t0,
            "elapsed_s": time.monotonic() - t0}


def probe_send(a) -> dict:
    """UDP flows ``dst_ip:dport`` from local ports ``sport`` (one socket each), one packet
    per flow every ``interval`` seconds."""
    socks = []
    for i, spec in enumerate(a.flow):
        dst_ip, sport, dport = spec.split(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", int(sport)))
        s.connect((dst_ip, int(dport)))
        socks.append((i, s))
    t0 = time.monotonic()
    seq, errors = 0, 0
    while True:
        due = t0 + seq * a.interval
        now = time.monotonic()
        if now - t0 >= a.duration:
            break
        if due > now:
            time.sleep(due - now)
        now = time.monotonic()
        for i, s in socks:
            try:
                s.send(_PROBE.pack(i, seq, now))
            except OSError:
                errors += 1
        seq += 1
    return {"tool": "probe-send", "flows": a.flow, "sent_per_flow": seq, "send_errors": errors,
            "t0": t0, "interval_s": a.interval}


def probe_recv(a) -> dict:
    """Arrival times per flow (named ``src_ip:sport->dport``)."""
    sel = selectors.DefaultSelector()
    for port in a.port:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, port)
    arrivals: dict[str, list] = {}
    t0 = time.monotonic()
    end = t0 + a.duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for key, _ in sel.select(min(0.1, end - now)):
            while True:
                try:
                    data, (ip, sport) = key.fileobj.recvfrom(64)
                except BlockingIOError:
                    break
                if len(data) < _PROBE.size:
                    continue
                _, seq, sent = _PROBE.unpack_from(data)
                arrivals.setdefault(f"{ip}:{sport}->{key.data}", []).append(
                    (seq, round(time.monotonic(), 6), round(sent, 6)))
    return {"tool": "probe-recv", "t0": t0, "arrivals": arrivals}


_stop = False


def _on_term(*_):
    global _stop
    _stop = True


def server(a) -> dict:
    """Accept and close on every port until ``duration`` passes or SIGTERM."""
    signal.signal(signal.SIGTERM, _on_term)
    sel = selectors.DefaultSelector()
    for port in a.port:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    if a.ready:
        open(a.ready, "w").close()
    accepted = 0
    end = time.monotonic() + a.duration
    while not _stop and time.monotonic() < end:
        for key, _ in sel.select(0.2):
            accepted += _accept_all(key.fileobj)
    for key in list(sel.get_map().values()):       # what is queued when told to stop
        accepted += _accept_all(key.fileobj)
    return {"tool": "server", "accepted": accepted}


def _accept_all(listener: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:             # BlockingIOError: the queue is empty
            return n
        conn.close()
        n += 1


def connect(a) -> dict:
    """``count`` sequential connects, ``interval`` apart; each one timed."""
    samples = []
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(a.timeout)
        t = time.perf_counter()
        t_start = time.monotonic()
        try:
            s.connect((a.dst_ip, a.port))
            ms = (time.perf_counter() - t) * 1000
            samples.append({"t": t_start, "sport": s.getsockname()[1], "ms": round(ms, 4),
                            "error": ""})
        except OSError as e:
            samples.append({"t": t_start, "sport": None, "ms": None,
                            "error": type(e).__name__ if isinstance(e, socket.timeout) else str(e)})
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        s.close()
        time.sleep(a.interval)
    return {"tool": "connect", "dst": f"{a.dst_ip}:{a.port}", "samples": samples}


def rate(a) -> dict:
    """New connections at ``rate`` per second for ``duration`` s, round-robin over ``dst``,
    without waiting for one to finish before the next (open loop). Each is closed with RST
    once established; a connection not established within ``timeout`` s is an error."""
    dsts = [(d.split(":")[0], int(d.split(":")[1])) for d in a.dst]
    sel = selectors.DefaultSelector()
    conns = []        # [t_start, sport, dst, ms | None, error]
    inflight: dict[int, tuple] = {}
    t0 = time.monotonic()
    total = int(a.rate * a.duration)
    started = 0
    while started < total or inflight:
        now = time.monotonic()
        while started < total and t0 + started / a.rate <= now:
            dst = dsts[started % len(dsts)]
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            t = time.monotonic()
            code = s.connect_ex(dst)
            rec = [round(t, 6), s.getsockname()[1], f"{dst[0]}:{dst[1]}", None, ""]
            conns.append(rec)
            if code in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE, (rec, t))
                inflight[s.fileno()] = (s, rec, t)
            else:
                rec[4] = os.strerror(code)
                s.close()
            started += 1
        nxt = t0 + started / a.rate if started < total else now + 0.05
        for key, _ in sel.select(max(0.0, min(0.05, nxt - time.monotonic()))):
            s = key.fileobj
            rec, t = key.data
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                rec[4] = os.strerror(err)
            else:
                rec[3] = round((time.monotonic() - t) * 1000, 4)
            _close(sel, inflight, s)
        now = time.monotonic()
        for fd, (s, rec, t) in list(inflight.items()):
            if now - t > a.timeout:
                rec[4] = "timeout"
                _close(sel, inflight, s)
    return {"tool": "rate", "rate": a.rate, "duration_s": a.duration, "timeout_s": a.timeout,
            "t0": t0, "conns": conns}


def _close(sel, inflight: dict, s: socket.socket) -> None:
    sel.unregister(s)
    inflight.pop(s.fileno(), None)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    s.close()


# --- command line ----------------------------------------------------------------------

TOOLS = {"flood": flood, "spray": spray, "probe-send": probe_send, "probe-recv": probe_recv,
         "server": server, "connect": connect, "rate": rate}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.traffic", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="tool", required=True)

    def tool(name, **kw):
        sp = sub.add_parser(name, **kw)
        sp.add_argument("--out", required=True, help="JSON result file")
        return sp

    for name in ("flood", "spray"):
        sp = tool(name)
        sp.add_argument("--intf", required=True)
        sp.add_argument("--dst-mac", required=True)
        sp.add_argument("--src-ip", required=True)
        sp.add_argument("--dst-ip", required=True)
    sp = sub.choices["flood"]
    sp.add_argument("--sport", type=int, default=40000)
    sp.add_argument("--dport", type=int, default=9)
    sp.add_argument("--size", type=int, default=60, help="frame size without FCS (default 60)")
    sp.add_argument("--rate", type=float, default=0, help="packets per second (default 0: unpaced)")
    sp.add_argument("--duration", type=float, required=True)
    sp = sub.choices["spray"]
    sp.add_argument("--count", type=int, required=True)
    sp.add_argument("--offset", type=int, default=0)
    sp.add_argument("--rate", type=float, required=True, help="packets per second")
    sp.add_argument("--sport-base", type=int, default=10000)
    sp.add_argument("--sport-span", type=int, default=50000)
    sp.add_argument("--dport-base", type=int, default=30000)

    sp = tool("probe-send")
    sp.add_argument("--flow", action="append", required=True, help="DST_IP:SPORT:DPORT")
    sp.add_argument("--interval", type=float, default=0.01)
    sp.add_argument("--duration", type=float, required=True)
    sp = tool("probe-recv")
    sp.add_argument("--port", type=int, action="append", required=True)
    sp.add_argument("--duration", type=float, required=True)
    sp = tool("server")
    sp.add_argument("--port", type=int, action="append", required=True)
    sp.add_argument("--duration", type=float, default=3600)
    sp.add_argument("--ready", help="file created once listening")
    sp = tool("connect")
    sp.add_argument("--dst-ip", required=True)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--count", type=int, required=True)
    sp.add_argument("--interval", type=float, default=0.01)
    sp.add_argument("--timeout", type=float, default=3.0)
    sp = tool("rate")
    sp.add_argument("--dst", action="append", required=True, help="IP:PORT")
    sp.add_argument("--rate", type=float, required=True)
    sp.add_argument("--duration", type=float, required=True)
    sp.add_argument("--timeout", type=float, default=1.0)
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    for name in ("rate", "duration", "interval", "count"):
        if a.tool == "flood" and name == "rate":
            continue
        if getattr(a, name, 1) is not None and getattr(a, name, 1) <= 0:
            print(f"bench.traffic: error: --{name} must be > 0", file=sys.stderr)
            return 2
    try:
        doc = TOOLS[a.tool](a)
    except OSError as e:
        print(f"bench.traffic {a.tool}: error: {e}", file=sys.stderr)
        return 1
    _write(a.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
