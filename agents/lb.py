"""The LB agent: one process per LB host, a thin I/O shell around ``agents.datapath``.

    python -m agents.lb --name lb1 --intf lb1-eth0 --cluster-intf lb1-eth1 \
        --secret-file /run/chainlb/secret --mode chain --run-dir /run/chainlb \
        --log-dir results/<run>/logs [--ct-timeouts tcp_established=600,...]

Data path: an AF_PACKET socket on the host's interface; IPv4 frames that the gateway
steered here go to the packet logic (``agents.datapath.Datapath``: which connection a packet
belongs to, its tracking, fragments, ICMP errors, the chain lookup), and the frames it returns
go out, to the chosen NF's MAC. Control path: raw 0x88B5 frames (``agents.wire``): chain
frames between LB nodes (on the cluster interface to the nodes the view gives a cluster MAC,
through the switch to the others, and to a peer whose hellos stop arriving over the cluster
network, until they come again: ``agents.paths``), views from the controller, heartbeats to
it. A unix socket
(``<run-dir>/<name>.sock``) answers ``status`` and ``table`` for the CLI.

Fast path (``--fastpath xdp``): an XDP program on the data interface forwards the packets of
the connections the packet logic puts in its map, in the kernel (``agents.fastpath``); the
rest still come here. Where it cannot be loaded, the agent says why once and runs without it.

First-packet timings (``--trace-first``): for every SYN, SYN-ACK and chain Write, Answer,
insert request or query it handles, the agent notes the kernel's receive time (SO_TIMESTAMPNS),
when its ``select`` returned, and, on the wall and CPU clocks, when it read the frame, decoded
it, handled it, built and sent each frame it sent because of it (``FirstTrace``);
``<log-dir>/<name>.first.jsonl`` at exit.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from agents import wire
from agents.chain import VARIANTS, Send
from agents.conntrack import CtTimeouts, parse_timeouts
from agents.datapath import IPV4, Datapath, Decided, FastDel, FastPut, FastRead
from agents.fastpath import FASTPATHS, FastPath, FastPathError
from agents.keys import key_str
from agents.messages import Answer, Frame, Heartbeat, Hello, InsertReq, Query, ViewMsg, Write
from agents.paths import ClusterPaths
from agents.modes import MODES
from agents.native import status as native_status

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
CTRL_MAC = bytes.fromhex("02000000ff01")
CHAIN = struct.pack("!H", wire.ETHERTYPE)
TICK = 0.02            # engine timers
HEARTBEAT = 0.1        # to the controller
HOUSEKEEPING = 0.5     # connection expiry
SO_TIMESTAMPNS = 35    # SCM_TIMESTAMPNS as well
TCP_SYN, TCP_ACK = 0x02, 0x10
# the cyclic collector's first generation runs once per this many allocations (Python's
# default: 700, a collection every few new connections, on their first packet's path); what
# the agent built before its loop is frozen out of every collection
GC_GEN0 = 20_000
SYN, SYNACK, DATA = "syn", "synack", "data"      # FirstTrace's kinds besides chain bodies
TRACED = (SYN, SYNACK) + tuple(c.__name__ for c in (Write, Answer, InsertReq, Query))


class FirstTrace:
    """Timings of the frames on a new connection's path through this agent (``--trace-first``):
    one record per traced frame in, ``{"in": kind, "kernel_ns", "woke_ns", "marks": [[label,
    wall_ns, cpu_ns], ...]}``. ``in`` is ``syn`` or ``synack`` (the TCP handshake's IPv4
    packets) or the chain body's class name; ``kernel_ns`` the kernel's receive time,
    ``woke_ns`` when ``select`` returned; the marks, in order, with the wall clock and the
    thread's CPU clock: ``read`` (the frame read), ``decoded`` (a chain frame parsed and its
    MAC checked), ``handled`` (the packet logic returned), per frame sent ``encoded`` (a chain
    frame built and signed) and ``sent <kind>`` (``data``: to an NF, or the class of the chain
    body), ``done``."""

    READ, DECODED, HANDLED, ENCODED, DONE = "read", "decoded", "handled", "encoded", "done"
    SENT = "sent "

    def __init__(self, path: str):
        self.path, self.records = path, []
        self.woke_ns = 0
        self.current: dict | None = None     # the record of the frame being handled

    @staticmethod
    def kind(buf: bytes) -> str:
        """``syn``/``synack`` for an IPv4 TCP SYN or SYN-ACK without IP options, else ''."""
        if buf[12:14] == IPV4 and len(buf) >= 48 and buf[14] == 0x45 and buf[23] == 6:
            flags = buf[47] & (TCP_SYN | TCP_ACK)
            return SYN if flags == TCP_SYN else SYNACK if flags == TCP_SYN | TCP_ACK else ""
        return ""

    def start(self, kind: str, kernel_ns: int) -> None:
        self.current = {"in": kind, "kernel_ns": kernel_ns, "woke_ns": self.woke_ns,
                        "marks": [[self.READ, time.time_ns(), time.thread_time_ns()]]}

    def mark(self, label: str) -> None:
        if self.current is not None:
            self.current["marks"].append([label, time.time_ns(), time.thread_time_ns()])

    def chain_in(self, body) -> None:
        """The frame being handled is a chain frame carrying ``body`` (parsed and checked)."""
        if self.current is not None and not self.current["in"]:
            self.current["in"] = type(body).__name__
        self.mark(self.DECODED)

    def sent(self, kind: str) -> None:
        self.mark(self.SENT + kind)

    def end(self) -> None:
        rec, self.current = self.current, None
        if rec is not None and rec["in"] in TRACED:
            rec["marks"].append([self.DONE, time.time_ns(), time.thread_time_ns()])
            self.records.append(rec)

    def write(self) -> None:
        with open(self.path, "w") as f:
            for rec in self.records:
                f.write(json.dumps(rec) + "\n")


class Agent:
    def __init__(self, name: str, intf: str, secret: bytes, mode: str, run_dir: str,
                 log_dir: str, timeouts: CtTimeouts = CtTimeouts(), cluster_intf: str = "",
                 variant: str = VARIANTS[0], fastpath: str = "off", trace_first: bool = False):
        self.name, self.intf, self.secret, self.mode = name, intf, secret, mode
        # per peer: how chain frames reach it, (sock, dst, src) on the LB cluster network
        # (while ``paths`` says it works) and through the gateway
        self.lb_via_cluster: dict[str, tuple[socket.socket, bytes, bytes]] = {}
        self.lb_via_gw: dict[str, tuple[socket.socket, bytes, bytes]] = {}
        self.paths = ClusterPaths()
        self.hellos = 0
        self.counts = {"forwarded": 0, "chain_rx": 0, "bad_frames": 0, "cluster_rx": 0,
                       "tx_errors": 0, "rx_errors": 0, "via_gateway": 0, "cluster_lost": 0,
                       "cluster_healed": 0}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((intf, 0))
        self.sock.setblocking(False)
        self.mac = self.sock.getsockname()[4][:6]
        self.fp: FastPath | None = None
        self.fastpath_error = ""
        if fastpath == "xdp":
            try:
                self.fp = FastPath.open(intf)
            except FastPathError as e:
                self.fastpath_error = str(e)
                print(f"{name}: fast path off: {e}; every packet goes through the agent",
                      file=sys.stderr)
        # a restarted agent's chain node is a new life of its name: a larger incarnation
        self.dp = Datapath(name, mode, self.mac, timeouts, incarnation=time.time_ns(),
                           variant=variant, fastpath=self.fp is not None)
        self.cluster_intf = cluster_intf
        self.csock: socket.socket | None = None     # the LB cluster network: chain frames only
        if cluster_intf:
            self.csock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                       socket.htons(wire.ETHERTYPE))
            self.csock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.csock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.csock.bind((cluster_intf, wire.ETHERTYPE))
            self.csock.setblocking(False)
            self.cluster_mac = self.csock.getsockname()[4][:6]
        os.makedirs(log_dir, exist_ok=True)
        decisions = os.path.join(log_dir, f"{name}.decisions.csv")
        fresh = not os.path.exists(decisions)     # an agent restarted under its name appends
        self.decisions_log = open(decisions, "a", buffering=1 << 16)
        self.decided: list[tuple[float, bytes, str]] = []     # (time, key, nf) to log
        if fresh:
            self.decisions_log.write("time,key,nf,mode\n")
        self.stats_path = os.path.join(log_dir, f"{name}.stats.json")
        self.ctl_path = os.path.join(run_dir, f"{name}.sock")
        if os.path.exists(self.ctl_path):
            os.unlink(self.ctl_path)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(self.ctl_path)
        os.chmod(self.ctl_path, 0o600)
        self.ctl.listen(4)
        self.ctl.setblocking(False)
        self.trace: FirstTrace | None = None
        if trace_first:
            self.trace = FirstTrace(os.path.join(log_dir, f"{name}.first.jsonl"))
            for sock in (self.sock, self.csock):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.running = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
        next_tick = next_hb = next_house = time.monotonic()
        # the cluster network's frames first: an Answer read before the packets it decides
        # sends them at once, one read after them holds them until the next round
        socks = [s for s in (self.csock, self.sock) if s is not None]
        watched = socks + [self.ctl]
        dp = self.dp
        trace = self.trace
        drain = self.drain if trace is None else self.drain_traced
        while self.running:
            now = time.monotonic()
            timeout = max(0.0, min(next_tick, next_hb, next_house) - now)
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            if trace is not None:
                trace.woke_ns = time.time_ns()
            for sock in socks:
                if sock in ready:
                    n = drain(sock, now)
                    if sock is self.csock:
                        self.counts["cluster_rx"] += n
            if self.ctl in ready:
                self.serve_control()
            if now >= next_tick:
                next_tick = now + TICK
                self.apply(dp.tick(now))
                self.cluster_tick(now)
            if now >= next_hb:
                next_hb = now + HEARTBEAT
                self.heartbeat()
            if now >= next_house:
                next_house = now + HOUSEKEEPING
                self.apply(dp.housekeeping(now))
                self.log_decisions()
        self.write_stats()
        if trace is not None:
            trace.write()
        if self.fp is not None:
            self.fp.close()

    # ------------------------------------------------------------------ frames

    def drain(self, sock: socket.socket, now: float) -> int:
        """Handle the frames ``sock`` holds (at most 512, so timers still run); how many.

        The data path's common case (an IPv4 packet in, one frame out) is inlined here."""
        recv, forward, send, control = sock.recv, self.dp.forward, self.sock.send, self.control
        cluster = sock is self.csock
        sent = errors = 0
        n = 0
        try:
            while n < 512:
                try:
                    buf = recv(65535)
                except BlockingIOError:
                    break
                except OSError:          # its interface went down (ENETDOWN, reported once)
                    self.counts["rx_errors"] += 1
                    break
                n += 1
                if buf[12:14] != IPV4:
                    control(buf, now, cluster)
                    continue
                out = forward(buf, now)
                if type(out) is bytes:
                    try:
                        send(out)
                        sent += 1
                    except OSError:
                        errors += 1
                elif out:
                    self.apply(out)
        finally:
            self.counts["forwarded"] += sent
            self.counts["tx_errors"] += errors
        return n

    def drain_traced(self, sock: socket.socket, now: float) -> int:
        """``drain`` with ``--trace-first``: each frame read with its kernel receive time and
        handled on the general path, its timings noted (``FirstTrace``)."""
        trace = self.trace
        n = 0
        while n < 512:
            try:
                buf, anc, _, _ = sock.recvmsg(65535, 64)
            except BlockingIOError:
                break
            except OSError:
                self.counts["rx_errors"] += 1
                break
            n += 1
            kernel_ns = 0
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    kernel_ns = sec * 1_000_000_000 + nsec
            trace.start(trace.kind(buf), kernel_ns)
            if buf[12:14] != IPV4:
                self.control(buf, now, sock is self.csock)
            else:
                out = self.dp.forward(buf, now)
                trace.mark(trace.HANDLED)
                if type(out) is bytes:
                    self.apply((out,))
                elif out:
                    self.apply(out)
            trace.end()
        return n

    def control(self, buf: bytes, now: float, cluster: bool = False) -> None:
        """A frame that is not IPv4: the chain protocol (chain frames, views, hellos; a hello
        counts only over the cluster network, ``cluster``)."""
        if buf[12:14] == CHAIN:
            self.counts["chain_rx"] += 1
            try:
                msg = wire.decode(buf[14:], self.secret)
            except wire.WireError:
                self.counts["bad_frames"] += 1
                return
            if isinstance(msg, Frame):
                trace = self.trace
                if trace is None:
                    self.apply(self.dp.chain(msg, now))
                else:
                    trace.chain_in(msg.body)
                    out = self.dp.chain(msg, now)
                    trace.mark(trace.HANDLED)
                    self.apply(out)
            elif isinstance(msg, ViewMsg):
                self.on_view(msg, now)
            elif isinstance(msg, Hello) and cluster:
                self.log_paths(self.paths.heard(msg.lb, now))

    def apply(self, actions) -> None:
        """Carry out the packet logic's actions (a list or tuple), in order.

        After a packet to an NF that chain frames follow (the tail forwarding a connection's
        first packet, then its Ack and Gones), the agent yields its CPU: the send woke the
        switch, often onto this CPU (a 2-vCPU host), and the packet then leaves before the
        frames nothing waits for are built and sent (``first_packet_overhead_ms_p50``: about
        0.25 ms less, README)."""
        last = len(actions) - 1
        for i, a in enumerate(actions):
            kind = type(a)
            if kind is bytes:
                self.tx(a)
                if self.trace is not None:
                    self.trace.sent(DATA)
                if i < last and type(actions[i + 1]) is not bytes:
                    os.sched_yield()
            elif kind is Send:
                if self.paths.via_cluster(a.dst):
                    route = self.lb_via_cluster.get(a.dst)
                else:
                    route = self.lb_via_gw.get(a.dst)
                    self.counts["via_gateway"] += 1
                if route is not None:
                    sock, dst, src = route
                    frame = wire.frame_bytes(dst, src, a.msg, self.secret)
                    if self.trace is not None:
                        self.trace.mark(FirstTrace.ENCODED)
                    self.tx(frame, data=False, sock=sock)
                    if self.trace is not None:
                        self.trace.sent(type(a.msg.body).__name__)
            elif kind is Decided:     # written out with the housekeeping (log_decisions)
                self.decided.append((time.time(), a.key, a.nf))
            elif kind is FastPut:
                if not self.fp.put(a.key, a.eth):
                    self.dp.fast_refused(a.key)
            elif kind is FastDel:
                self.dp.fast_left(a.key, self.fp.delete(a.key))
            elif kind is FastRead:
                self.apply(self.dp.fast_seen(self.fp.seen(a.keys), time.monotonic()))

    def tx(self, frame: bytes, data: bool = True, sock: socket.socket | None = None) -> None:
        """Send a frame; a dropped send (full queue, egress filter) is a lost frame."""
        try:
            (sock or self.sock).send(frame)
        except OSError:
            self.counts["tx_errors"] += 1
            return
        if data:
            self.counts["forwarded"] += 1

    # ------------------------------------------------------------------ control

    def on_view(self, view: ViewMsg, now: float) -> None:
        if view.epoch <= self.dp.epoch:
            return
        if view.mode != self.mode:
            print(f"{self.name}: controller runs mode {view.mode!r}, agent {self.mode!r}",
                  file=sys.stderr)
        self.lb_via_gw = {lb.name: (self.sock, wire.mac_bytes(lb.mac), self.mac)
                          for lb in view.lbs}
        self.lb_via_cluster = {
            lb.name: (self.csock, wire.mac_bytes(lb.cluster_mac), self.cluster_mac)
            for lb in view.lbs
            if self.csock is not None and lb.cluster_mac and lb.name != self.name}
        self.paths.set_peers(self.lb_via_cluster, now)
        self.apply(self.dp.view(view, now))

    def cluster_tick(self, now: float) -> None:
        """Hellos to the peers on the cluster network, and the paths that changed."""
        hello, changes = self.paths.tick(now)
        if hello:
            self.hellos += 1
            msg = Hello(self.name, self.dp.epoch, self.hellos)
            for peer in hello:
                _, dst, src = self.lb_via_cluster[peer]
                self.tx(wire.frame_bytes(dst, src, msg, self.secret), data=False,
                        sock=self.csock)
        self.log_paths(changes)

    def log_paths(self, changes) -> None:
        for c in changes:
            self.counts["cluster_healed" if c.cluster else "cluster_lost"] += 1
            print(f"{self.name}: {c.peer} " + (
                "heard again over the LB cluster network: chain frames go that way again"
                if c.cluster else f"not heard over the LB cluster network for {c.silent_s} s: "
                                  "chain frames go through the gateway"), file=sys.stderr)

    def heartbeat(self) -> None:
        """Alive, at the newest view this node is ready to serve (chain: synchronized)."""
        epoch, entries = self.dp.heartbeat()
        hb = Heartbeat(self.name, epoch, entries)
        self.tx(wire.frame_bytes(CTRL_MAC, self.mac, hb, self.secret), data=False)

    def status(self) -> dict:
        out = self.dp.status()
        out["counts"].update(self.counts)
        out["cluster_intf"] = self.cluster_intf
        if self.fp is not None:
            fast = self.fp.stats()
            out["counts"].update(fast_tx=fast["tx"], fast_pass=fast["pass"],
                                 fast_miss=fast["miss"], fast_errors=self.fp.errors)
            out["fastpath"] = f"xdp ({self.fp.mode})"
        else:
            out["counts"].update(fast_tx=0, fast_pass=0, fast_miss=0, fast_errors=0)
            out["fastpath"] = "off" + (f" ({self.fastpath_error})" if self.fastpath_error else "")
        out["via_gateway_to"] = self.paths.lost()
        out["native"] = native_status
        return out

    def table(self, limit: int = 50) -> dict:
        return self.dp.table(limit)

    def serve_control(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                request = conn.recv(4096).decode().strip()
                cmd, _, arg = request.partition(" ")
                if cmd == "status":
                    reply = self.status()
                elif cmd == "table":
                    reply = self.table(int(arg) if arg.isdigit() else 50)
                else:
                    reply = {"error": f"unknown command {cmd!r}; valid: status, table [N]"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def log_decisions(self) -> None:
        """The decisions since the last call, into the decision log: formatting a key costs a
        new connection's first packets tens of microseconds with the caches cold."""
        decided, self.decided = self.decided, []
        write, mode = self.decisions_log.write, self.mode
        for t, key, nf in decided:
            write(f"{t:.6f},{key_str(key)},{nf},{mode}\n")

    def write_stats(self) -> None:
        self.log_decisions()
        self.decisions_log.flush()
        with open(self.stats_path, "w") as f:
            json.dump(self.status(), f, indent=1)

    def stop(self, *_):
        self.running = False


def query(run_dir: str, name: str, command: str, timeout: float = 2.0) -> dict:
    """Ask a running agent over its unix socket (used by the CLI and scenarios)."""
    path = os.path.join(run_dir, f"{name}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agents.lb", description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--intf", required=True, help="the interface to the switch")
    p.add_argument("--cluster-intf", default="",
                   help="the interface to the LB cluster network (chain frames), if any")
    p.add_argument("--secret-file", required=True)
    p.add_argument("--mode", choices=MODES, default="chain")
    p.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0],
                   help="the chain protocol's variant (agents.chain)")
    p.add_argument("--run-dir", default="/run/chainlb")
    p.add_argument("--log-dir", required=True)
    p.add_argument("--fastpath", choices=FASTPATHS, default="off",
                   help="forward established connections in the kernel (XDP), or not")
    p.add_argument("--trace-first", action="store_true",
                   help="note the timings of every frame on a new connection's path "
                        "(<log-dir>/<name>.first.jsonl at exit; slower: for measurements)")
    p.add_argument("--ct-timeouts", default="",
                   help="conntrack timeouts, as the NFs have them (agents.conntrack): "
                        "name=seconds,... (default: the kernel's)")
    args = p.parse_args(argv)
    try:
        timeouts = parse_timeouts(args.ct_timeouts)
    except ValueError as e:
        p.error(str(e))
    try:
        with open(args.secret_file, "rb") as f:
            secret = f.read()
        agent = Agent(args.name, args.intf, secret, args.mode, args.run_dir, args.log_dir,
                      timeouts, args.cluster_intf, args.variant, args.fastpath, args.trace_first)
    except OSError as e:
        print(f"agents.lb: error: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
