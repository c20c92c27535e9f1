"""The LB agent: one process per LB host, a thin I/O shell around the LB logic.

    python -m agents.lb --name lb1 --intf lb1-eth0 --cluster-intf lb1-eth1 \
        --secret-file /run/chainlb/secret --mode chain --run-dir /run/chainlb \
        --log-dir results/<run>/logs

Data path: an AF_PACKET socket on the host's interface; IPv4 frames that the gateway
steered here are parsed with ``struct``, mapped to their connection key, and forwarded by
rewriting the destination MAC to the chosen NF's. In ``chain`` mode a key's packets are
buffered until the chain decides; the first one rides to the key's tail, which forwards it
as it commits the decision. Control path: raw 0x88B5 frames (``agents.wire``): chain
frames between LB nodes (on the cluster interface to the nodes the view gives a cluster MAC,
through the switch to the others), views from the controller, heartbeats to it. A unix socket
(``<run-dir>/<name>.sock``) answers ``status`` and ``table`` for the CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from agents import wire
from agents.chain import ChainNode, Decision, Forward, Send, View
from agents.keys import flow_key_raw, key_str
from agents.messages import Frame, Heartbeat, ViewMsg
from agents.modes import MODES, Picker

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
CTRL_MAC = bytes.fromhex("02000000ff01")
IPV4 = b"\x08\x00"
CHAIN = struct.pack("!H", wire.ETHERTYPE)
TICK = 0.02            # engine timers
HEARTBEAT = 0.1        # to the controller
HOUSEKEEPING = 0.5     # FIN / idle deletes
MAX_BUFFERED = 256     # packets held per key while its lookup is pending
_PORTS = struct.Struct("!HH")


class Agent:
    def __init__(self, name: str, intf: str, secret: bytes, mode: str, run_dir: str,
                 log_dir: str, fin_grace: float, idle_timeout: float, cluster_intf: str = ""):
        self.name, self.intf, self.secret, self.mode = name, intf, secret, mode
        self.fin_grace, self.idle_timeout = fin_grace, idle_timeout
        self.picker = Picker(mode)
        self.node: ChainNode | None = None
        self.epoch = 0
        self.ready_epoch = 0
        self.nf_mac: dict[str, bytes] = {}      # usable NFs (active or draining)
        self.lb_route: dict[str, tuple[socket.socket, bytes, bytes]] = {}  # sock, dst, src
        self.failed: set[str] = set()
        self.buffered: dict[bytes, list[bytes]] = {}
        self.decided: dict[bytes, str] = {}      # stateless modes: the NF each key last went to
        self.last_seen: dict[bytes, float] = {}
        self.closing: dict[bytes, float] = {}
        self.counts = {"rx": 0, "forwarded": 0, "buffered": 0, "dropped_no_nf": 0,
                       "dropped_buffer_full": 0, "chain_rx": 0, "bad_frames": 0,
                       "cluster_rx": 0, "deletes": 0, "decisions": 0, "tx_errors": 0}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((intf, 0))
        self.sock.setblocking(False)
        self.mac = self.sock.getsockname()[4][:6]
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
        self.decisions_log = open(os.path.join(log_dir, f"{name}.decisions.csv"), "w",
                                  buffering=1 << 16)
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
        self.running = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        next_tick = next_hb = next_house = time.monotonic()
        socks = [s for s in (self.sock, self.csock) if s is not None]
        watched = socks + [self.ctl]
        while self.running:
            now = time.monotonic()
            timeout = max(0.0, min(next_tick, next_hb, next_house) - now)
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for sock in socks:
                if sock in ready:
                    n = self.drain(sock, now)
                    if sock is self.csock:
                        self.counts["cluster_rx"] += n
            if self.ctl in ready:
                self.serve_control()
            if now >= next_tick:
                next_tick = now + TICK
                if self.node is not None:
                    self.apply(self.node.tick(now), now)
            if now >= next_hb:
                next_hb = now + HEARTBEAT
                self.heartbeat()
            if now >= next_house:
                next_house = now + HOUSEKEEPING
                self.housekeeping(now)
        self.write_stats()

    # ------------------------------------------------------------------ frames

    def drain(self, sock: socket.socket, now: float) -> int:
        """Handle the frames ``sock`` holds (at most 512, so timers still run); how many."""
        recv, handle = sock.recv, self.handle_frame
        for n in range(512):
            try:
                handle(recv(65535), now)
            except BlockingIOError:
                return n
        return 512

    def handle_frame(self, buf: bytes, now: float) -> None:
        etype = buf[12:14]
        if etype == IPV4:
            self.forward(buf, now)
        elif etype == CHAIN:
            self.counts["chain_rx"] += 1
            try:
                msg = wire.decode(buf[14:], self.secret)
            except wire.WireError:
                self.counts["bad_frames"] += 1
                return
            if isinstance(msg, Frame):
                if self.node is not None:
                    self.apply(self.node.receive(msg.src, msg, now), now)
            elif isinstance(msg, ViewMsg):
                self.on_view(msg, now)

    def forward(self, buf: bytes, now: float) -> None:
        self.counts["rx"] += 1
        ihl = (buf[14] & 0x0F) << 2
        proto = buf[23]
        if proto == 6 or proto == 17:
            sport, dport = _PORTS.unpack_from(buf, 14 + ihl)
        else:
            sport = dport = 0
        key = flow_key_raw(buf[26:30], buf[30:34], proto, sport, dport)
        self.last_seen[key] = now
        if proto == 6 and buf[27 + ihl] & 0x05:        # FIN or RST
            self.closing.setdefault(key, now)
        node = self.node
        if node is not None:
            hit = node.cache.get(key)
            if hit is not None:
                mac = self.nf_mac.get(hit[1])
                if mac is not None:
                    self.tx(mac + self.mac + buf[12:])
                else:
                    self.counts["dropped_no_nf"] += 1
                return
            self.lookup(key, buf, now)
            return
        if self.mode == "chain":
            self.counts["dropped_no_nf"] += 1           # no view yet
            return
        nf = self.picker.stateless(key)
        mac = self.nf_mac.get(nf) if nf else None
        if mac is None:
            self.counts["dropped_no_nf"] += 1
            return
        if self.decided.get(key) != nf:               # a new connection, or a re-mapped one
            self.decided[key] = nf
            self.counts["decisions"] += 1
            self.log_decision(now, key, nf)
        self.tx(mac + self.mac + buf[12:])

    def lookup(self, key: bytes, buf: bytes, now: float) -> None:
        held = self.buffered.get(key)
        if held is not None:
            if len(held) < MAX_BUFFERED:
                held.append(buf)
                self.counts["buffered"] += 1
            else:
                self.counts["dropped_buffer_full"] += 1
            return
        proposal = self.picker.propose(key)
        if proposal is None:
            self.counts["dropped_no_nf"] += 1
            return
        self.buffered[key] = [buf]
        self.counts["buffered"] += 1
        self.apply(self.node.lookup(key, proposal, now, buf[14:]), now)

    def apply(self, actions, now: float) -> None:
        if len(actions) > 1:                # held packets first; the rest in the engine's order
            actions = sorted(actions, key=lambda a: not isinstance(a, Decision))
        for a in actions:
            if isinstance(a, Send):
                route = self.lb_route.get(a.dst)
                if route is not None:
                    sock, dst, src = route
                    self.tx(wire.frame_bytes(dst, src, a.msg, self.secret), data=False, sock=sock)
            elif isinstance(a, Decision):
                self.counts["decisions"] += 1
                held = self.buffered.pop(a.key, ())
                if a.released:                     # the tail sent the first one
                    held = held[1:]
                mac = self.nf_mac.get(a.nf)
                if mac is None:
                    self.counts["dropped_no_nf"] += len(held)
                else:
                    for buf in held:
                        self.tx(mac + self.mac + buf[12:])
                self.log_decision(now, a.key, a.nf)
            elif isinstance(a, Forward):           # as the tail: an asker's first packet
                mac = self.nf_mac.get(a.nf)
                if mac is None:
                    self.counts["dropped_no_nf"] += 1
                else:
                    self.tx(mac + self.mac + IPV4 + a.packet)

    def tx(self, frame: bytes, data: bool = True, sock: socket.socket | None = None) -> None:
        """Send a frame; a dropped send (full queue, egress filter) is a lost frame."""
        try:
            (sock or self.sock).send(frame)
        except OSError:
            self.counts["tx_errors"] += 1
            return
        if data:
            self.counts["forwarded"] += 1

    def log_decision(self, now: float, key: bytes, nf: str) -> None:
        self.decisions_log.write(f"{time.time():.6f},{key_str(key)},{nf},{self.mode}\n")

    # ------------------------------------------------------------------ control

    def on_view(self, view: ViewMsg, now: float) -> None:
        if view.epoch <= self.epoch:
            return
        if view.mode != self.mode:
            print(f"{self.name}: controller runs mode {view.mode!r}, agent {self.mode!r}",
                  file=sys.stderr)
        self.epoch = view.epoch
        self.lb_route = {lb.name: self.route(lb) for lb in view.lbs}
        self.nf_mac = {nf.name: wire.mac_bytes(nf.mac) for nf in view.nfs if nf.state != "failed"}
        newly_failed = {nf.name for nf in view.nfs if nf.state == "failed"} - self.failed
        self.failed |= newly_failed
        self.picker.set_active(nf.name for nf in view.nfs if nf.state == "active")
        for nf in newly_failed:
            for key in [k for k, v in self.picker.local.items() if v == nf]:
                self.picker.forget(key)
        if self.mode != "chain":
            return
        members = tuple(lb.name for lb in view.lbs)
        chain_view = View(view.epoch, members, view.chain_len, steering_slots(view.lbs))
        if self.node is None:
            if self.name in members:
                self.node = ChainNode(self.name, chain_view)
                self.apply(self.node.tick(now), now)
            return
        self.apply(self.node.set_view(chain_view, now), now)
        for nf in newly_failed:
            self.apply(self.node.purge_nf(nf, now), now)

    def route(self, lb) -> tuple[socket.socket, bytes, bytes]:
        """How chain frames reach LB node ``lb``: the cluster network if both are on it."""
        if self.csock is not None and lb.cluster_mac:
            return self.csock, wire.mac_bytes(lb.cluster_mac), self.cluster_mac
        return self.sock, wire.mac_bytes(lb.mac), self.mac

    def heartbeat(self) -> None:
        """Alive, at the newest view this node is ready to serve (chain: synchronized)."""
        node = self.node
        if node is None or node.synced:
            self.ready_epoch = self.epoch
        entries = node.live if node is not None else len(self.picker.local)
        hb = Heartbeat(self.name, self.ready_epoch, entries)
        self.tx(wire.frame_bytes(CTRL_MAC, self.mac, hb, self.secret), data=False)

    def housekeeping(self, now: float) -> None:
        """Connections that closed (FIN/RST, then quiet) or went idle are deleted."""
        done = [k for k, t in self.closing.items()
                if now - self.last_seen.get(k, t) >= self.fin_grace]
        done += [k for k, t in self.last_seen.items()
                 if now - t >= self.idle_timeout and k not in self.closing]
        for key in done:
            self.closing.pop(key, None)
            self.last_seen.pop(key, None)
            self.decided.pop(key, None)
            self.counts["deletes"] += 1
            if self.node is not None:
                if key in self.node.cache:
                    self.apply(self.node.delete(key, now), now)
            else:
                self.picker.forget(key)

    def status(self) -> dict:
        node = self.node
        out = {"name": self.name, "mode": self.mode, "epoch": self.epoch,
               "cluster_intf": self.cluster_intf,
               "active_nfs": list(self.picker.active), "counts": self.counts,
               "pending": len(self.buffered), "connections": len(self.last_seen)}
        if node is not None:
            out.update(entries=node.live, records=len(node.store), cached=len(node.cache),
                       synced=node.synced,
                       roles=node.roles(), engine=node.stats, members=list(node.view.members),
                       steering=list(node.view.steering),
                       chain_len=node.view.chain_len)
        else:
            out.update(entries=len(self.picker.local))
        return out

    def table(self, limit: int = 50) -> dict:
        node = self.node
        if node is None:
            rows = [{"key": key_str(k), "nf": nf, "role": "local"}
                    for k, nf in list(self.picker.local.items())[:limit]]
            return {"name": self.name, "entries": len(self.picker.local), "rows": rows,
                    "chains": []}
        rows, chains = [], {}
        for key, rec in node.store.items():
            chain = node.view.chain(key)
            chains[chain] = chains.get(chain, 0) + 1
            if len(rows) < limit:
                rows.append({"key": key_str(key), "nf": rec.nf or "(deleted)", "ver": rec.ver,
                             "committed": rec.committed, "role": node.role(key),
                             "chain": " > ".join(chain)})
        return {"name": self.name, "epoch": node.view.epoch, "entries": len(node.store),
                "roles": node.roles(), "rows": rows,
                "chains": [{"chain": " > ".join(c), "keys": n}
                           for c, n in sorted(chains.items(), key=lambda x: -x[1])]}

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

    def write_stats(self) -> None:
        self.decisions_log.flush()
        with open(self.stats_path, "w") as f:
            json.dump(self.status(), f, indent=1)

    def stop(self, *_):
        self.running = False


def steering_slots(lbs) -> tuple[str, ...]:
    """The gateway's bundle slots (see ``View.steering``); () unless every node has one."""
    if not lbs or not all(lb.slot for lb in lbs) or len({lb.slot for lb in lbs}) < len(lbs):
        return ()
    slots = [""] * max(lb.slot for lb in lbs)
    for lb in lbs:
        slots[lb.slot - 1] = lb.name
    return tuple(slots)


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
    p.add_argument("--run-dir", default="/run/chainlb")
    p.add_argument("--log-dir", required=True)
    p.add_argument("--fin-grace", type=float, default=2.0)
    p.add_argument("--idle-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    try:
        with open(args.secret_file, "rb") as f:
            secret = f.read()
        agent = Agent(args.name, args.intf, secret, args.mode, args.run_dir, args.log_dir,
                      args.fin_grace, args.idle_timeout, args.cluster_intf)
    except OSError as e:
        print(f"agents.lb: error: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
