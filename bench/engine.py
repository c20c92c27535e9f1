"""Benchmark of the chain engine alone, in one process: ``python -m bench.engine``.

Every figure stands next to a plain-dict baseline measured in the same run:

- cached-hit lookups/s (``ChainNode.lookup`` on a decided key) vs ``dict.get``;
- committed inserts/s through a 3-node chain (an in-process network delivers every ``Send``
  at once until quiet; an insert counts when its ``Decision`` appears; the clock runs at
  1,000 inserts/s and every node's timers fire every 20 ms, as in the agents) vs a dict store;
- frames and bytes per insert (each frame through ``wire.encode`` + 14 bytes of Ethernet
  header) vs one frame carrying the raw key and NF name;
- memory per stored entry per replica (tracemalloc around a cluster whose frames go through
  ``wire.encode``/``decode``, so every node holds its own copies) vs ``{key: nf}``;
- a new connection's first packet through three LB nodes' packet logic (``Datapath``, frames
  through ``wire`` as the agents send them), per stage, with the caches cold (a 32 MB copy
  before each frame, as the agents find them: compare the testbed's ``first-packet`` group)
  vs the same stage warm; and three of its parts cold: the frame MAC (keyed BLAKE2b) vs
  HMAC-SHA256, ranking a new key's chain (``agents.native``) vs the same in Python, and a
  Write carrying a SYN encoded and decoded by wire's fast paths, compiled vs in Python.

Writes ``results/bench-engine/<run-id>/engine.csv``, points ``results/bench-engine/latest``
at it and prints a table. Needs neither root nor a network.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import random
import statistics
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path

from agents import lb as lb_agent
from agents import wire
from agents.chain import ChainNode, Decision, Send, View
from agents.datapath import Datapath
from agents.messages import Frame, LBInfo, NFInfo, ViewMsg, Write
from agents.keys import flow_key_raw
from bench import REPO, Row, format_table, new_run_dir, point_latest, write_csv

SECRET = b"bench-engine-shared-secret-0123"
MEMBERS = ("lb1", "lb2", "lb3")
NF = "nf1"
CSV_NAME = "engine.csv"
INSERT_GAP = 0.001   # seconds of the cluster's clock per insert: 1,000 inserts/s


def make_keys(n: int, seed: int = 1) -> list[bytes]:
    """``n`` distinct IPv4 TCP connection keys (clients 10.0.1.x, servers 10.0.2.x)."""
    rng = random.Random(seed)
    keys: set[bytes] = set()
    while len(keys) < n:
        client = bytes((10, 0, 1, rng.randrange(1, 255)))
        server = bytes((10, 0, 2, rng.randrange(1, 255)))
        keys.add(flow_key_raw(client, server, 6, rng.randrange(1024, 65536), 5201))
    return sorted(keys, key=lambda k: rng.random())


class Cluster:
    """Chain nodes joined by an in-process network that delivers every Send at once.

    With ``secret``, every frame goes through ``wire.encode``/``wire.decode`` on its way and
    its bytes (plus the Ethernet header) are counted.
    """

    def __init__(self, members=MEMBERS, chain_len: int = 3, secret: bytes | None = None):
        # one View per node, as in separate processes; with gateway slots, as the agents get them
        self.nodes = {m: ChainNode(m, View(1, tuple(members), chain_len, tuple(members)))
                      for m in members}
        self.secret = secret
        self.frames = 0
        self.data_frames = 0
        self.bytes = 0
        self.decisions: dict[bytes, str] = {}
        self.now = 1.0
        self.tick()

    def pump(self, origin: str, actions: list) -> None:
        """Deliver ``actions`` (from node ``origin``) and everything they cause, until quiet."""
        queue = deque([(origin, actions)])
        nodes, secret, now = self.nodes, self.secret, self.now
        while queue:
            src, acts = queue.popleft()
            for act in acts:
                if type(act) is Send:
                    msg = act.msg
                    self.frames += 1
                    if msg.body is not None:
                        self.data_frames += 1
                    if secret is not None:
                        data = wire.encode(msg, secret)
                        self.bytes += len(data) + wire.ETH_HLEN
                        msg = wire.decode(data, secret)
                    queue.append((act.dst, nodes[act.dst].receive(src, msg, now)))
                elif type(act) is Decision:
                    self.decisions[act.key] = act.nf

    def insert(self, asker: str, key: bytes, nf: str = NF) -> None:
        self.now += INSERT_GAP
        self.pump(asker, self.nodes[asker].lookup(key, nf, self.now))
        if self.now >= self.next_tick:
            self.tick()

    def tick(self) -> None:
        """Every node's timers (delayed acks go out here)."""
        self.next_tick = self.now + lb_agent.TICK
        for name, node in self.nodes.items():
            self.pump(name, node.tick(self.now))

    def check(self, keys: list[bytes]) -> None:
        """Every key decided, and on every replica: the benchmark measured real work."""
        missing = [k for k in keys if k not in self.decisions]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(keys)} lookups got no decision")
        for name, node in self.nodes.items():
            replica = node.replica()
            lacking = sum(1 for k in keys if replica.get(k) != self.decisions[k])
            if lacking:
                raise RuntimeError(f"{name} lacks {lacking} of {len(keys)} committed entries")


def _rate(fn, n: int, repeat: int, min_time: float = 0.2) -> float:
    """Operations/s of ``fn()`` (which does ``n`` operations): best of ``repeat`` timings,
    each repeating ``fn`` for at least ``min_time`` seconds."""
    best = 0.0
    for _ in range(repeat):
        gc.collect()
        calls = 0
        t = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t
            if elapsed >= min_time:
                break
        best = max(best, calls * n / elapsed)
    return best


def bench_cached_lookups(n: int, repeat: int) -> list[Row]:
    keys = make_keys(n, seed=2)
    cluster = Cluster()
    for k in keys:
        cluster.insert("lb1", k)       # lb1 asks, so lb1 caches the answers
    cluster.check(keys)
    node = cluster.nodes["lb1"]
    now = cluster.now
    hits = [node.lookup(k, NF, now) for k in keys]
    if any(h != [Decision(k, NF)] for h, k in zip(hits, keys)):
        raise RuntimeError("a cached lookup did not answer at once")
    table = {k: NF for k in keys}
    lookup, get = node.lookup, table.get

    def engine():
        for k in keys:
            lookup(k, NF, now)

    def baseline():
        for k in keys:
            get(k)
    return [Row("cached_lookups_per_s", _rate(engine, n, repeat), "lookups/s",
                "dict.get", _rate(baseline, n, repeat))]


def bench_inserts(n: int, repeat: int) -> list[Row]:
    keys = make_keys(n * repeat, seed=3)
    best = float("inf")
    for r in range(repeat):
        batch = keys[r * n:(r + 1) * n]
        cluster = Cluster()
        insert = cluster.insert
        gc.collect()
        t = time.perf_counter()
        for i, k in enumerate(batch):
            insert(MEMBERS[i % 3], k)
        best = min(best, time.perf_counter() - t)
        cluster.check(batch)
    table: dict[bytes, str] = {}

    def baseline():
        table.clear()
        for k in keys[:n]:
            table[k] = NF
    return [Row("committed_inserts_per_s", n / best, "inserts/s", "dict set",
                _rate(baseline, n, repeat))]


def bench_wire(n: int) -> list[Row]:
    keys = make_keys(n, seed=4)
    cluster = Cluster(secret=SECRET)
    base = (cluster.frames, cluster.data_frames, cluster.bytes)
    for i, k in enumerate(keys):
        cluster.insert(MEMBERS[i % 3], k)
    cluster.tick()
    cluster.check(keys)
    frames = (cluster.frames - base[0]) / n
    data_frames = (cluster.data_frames - base[1]) / n
    nbytes = (cluster.bytes - base[2]) / n
    raw = len(keys[0]) + len(NF.encode())
    return [Row("frames_per_insert", frames, "frames", "one frame with key+nf", 1),
            Row("data_frames_per_insert", data_frames, "frames", "one frame with key+nf", 1),
            Row("bytes_per_insert", nbytes, "bytes", "raw key+nf", raw)]


def _traced(build) -> tuple[object, int]:
    """What ``build()`` returns and the bytes it left allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = build()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return obj, used


def bench_memory(n: int) -> list[Row]:
    keys = make_keys(n, seed=5)

    def build_cluster():
        cluster = Cluster(secret=SECRET)
        for i, k in enumerate(keys):
            cluster.insert(MEMBERS[i % 3], k)
        cluster.tick()
        cluster.decisions = {}          # the benchmark's own record, not engine state
        return cluster
    cluster, used = _traced(build_cluster)
    replicas = sum(len(node.replica()) for node in cluster.nodes.values())
    if replicas != n * len(MEMBERS):
        raise RuntimeError(f"{replicas} replicated entries, expected {n * len(MEMBERS)}")

    def build_dict():  # a node's own copy of each key, as a decoded frame would give it
        return {bytes(bytearray(k)): NF for k in keys}
    table, base = _traced(build_dict)
    assert len(table) == n
    return [Row("memory_per_entry_bytes", used / replicas, "bytes", "dict {key: nf}", base / n)]


# --- the first packet, cold ------------------------------------------------------------------

_EVICT = 32 << 20     # bytes copied before a cold frame: more than this machine's caches


class _Evict:
    """Empties the CPU caches (as far as a copy can): what a connect 10 ms after the last
    finds in an agent on a shared 2-vCPU machine."""

    def __init__(self):
        self.buf, self.a, self.b = bytearray(_EVICT), bytes(_EVICT), b"\x01" * _EVICT

    def __call__(self) -> None:
        self.buf[:] = self.b if self.buf[0] == 0 else self.a


def _syn(dst_mac: bytes, sport: int) -> bytes:
    """A TCP SYN 10.0.1.1:sport -> 10.0.2.1:80 (checksums unset: nothing here reads them)."""
    ip = bytes((0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 1, 1, 10, 0, 2, 1))
    tcp = sport.to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(8) + \
        bytes((0x50, 0x02)) + (64240).to_bytes(2, "big") + bytes(4)
    return dst_mac + bytes.fromhex("0200000000fe") + b"\x08\x00" + ip + tcp


class FirstPacket:
    """Three LB nodes' packet logic in chain mode (L=3, steered), joined the agents' way:
    every chain frame encoded, signed, decoded and checked (``wire``)."""

    STAGES = ("head_syn", "middle_write", "tail_write", "head_answer")

    def __init__(self, secret: bytes = SECRET):
        self.secret, self.now = secret, 1.0
        self.macs = {m: bytes((2, 0, 0, 0, 3, i + 1)) for i, m in enumerate(MEMBERS)}
        view = ViewMsg(1, 3, "chain",
                       tuple(LBInfo(m, self.macs[m].hex(":"), port=i + 1, slot=i + 1)
                             for i, m in enumerate(MEMBERS)),
                       (NFInfo(NF, "02:00:00:00:04:01", "active"),))
        self.dps = {m: Datapath(m, "chain", self.macs[m]) for m in MEMBERS}
        self.pending: deque = deque()
        for m, dp in self.dps.items():
            self._queue(m, dp.view(view, self.now))
        for _ in range(10):                      # until every node is synced
            self.now += lb_agent.TICK
            for m, dp in self.dps.items():
                self._queue(m, dp.tick(self.now))
            self._settle()
        self.sport = 1024

    def _frame(self, src: str, send: Send) -> bytes:
        return wire.frame_bytes(self.macs[send.dst], self.macs[src], send.msg, self.secret)

    def _queue(self, src: str, actions) -> None:
        self.pending.extend((src, a) for a in actions if type(a) is Send)

    def _settle(self) -> None:
        while self.pending:
            src, send = self.pending.popleft()
            msg = wire.decode(self._frame(src, send)[14:], self.secret)
            self._queue(send.dst, self.dps[send.dst].chain(msg, self.now))

    def _handle(self, node: str, frame: bytes) -> list[tuple[str, bytes]]:
        """What an agent does with a frame: the chain frames it sends, built."""
        dp = self.dps[node]
        if frame[12:14] == b"\x08\x00":
            out = dp.packet(frame, self.now)
        else:
            out = dp.chain(wire.decode(frame[14:], self.secret), self.now)
        sent = []
        for a in out:
            if type(a) is Send:
                sent.append((a.dst, self._frame(node, a)))
        return sent

    def connection(self, evict=None) -> dict[str, float]:
        """One new connection's first packet, stage by stage: microseconds each (``evict``
        runs before each frame)."""
        self.sport = self.sport % 60000 + 1
        key = flow_key_raw(bytes((10, 0, 1, 1)), bytes((10, 0, 2, 1)), 6, self.sport, 80)
        head, middle, tail = self.dps[MEMBERS[0]].node.view.chain(key)
        syn = _syn(self.macs[head], self.sport)
        times, frames, untimed = {}, [(head, syn, "head_syn")], []
        while frames:
            node, frame, stage = frames.pop(0)
            if evict is not None:
                evict()
            t = time.perf_counter_ns()
            out = self._handle(node, frame)
            times[stage] = (time.perf_counter_ns() - t) / 1e3
            for dst, f in out:
                body = type(wire.decode(f[14:], self.secret).body).__name__
                nxt = {("Write", middle): "middle_write", ("Write", tail): "tail_write",
                       ("Answer", head): "head_answer"}.get((body, dst))
                if nxt is not None:
                    frames.append((dst, f, nxt))
                else:
                    untimed.append((dst, f))
        # the acks, untimed, then the timers, as the agents' next ticks would run them
        for dst, f in untimed:
            self._queue(dst, self.dps[dst].chain(wire.decode(f[14:], self.secret), self.now))
        self._settle()
        self.now += 0.01
        for m, dp in self.dps.items():
            self._queue(m, dp.tick(self.now))
        self._settle()
        if set(times) != set(self.STAGES):
            raise RuntimeError(f"a first packet took stages {sorted(times)}, not {self.STAGES}")
        return times


def bench_first_packet(n: int) -> list[Row]:
    fp, evict = FirstPacket(), _Evict()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            fp.connection()
        warm = [fp.connection() for _ in range(n)]
        cold = [fp.connection(evict) for _ in range(n)]
    finally:
        gc.enable()
    rows = []
    for stage in FirstPacket.STAGES:
        w = statistics.median(t[stage] for t in warm)
        c = statistics.median(t[stage] for t in cold)
        rows.append(Row(f"first_packet_cold_us_{stage}", c, "us", "the same, warm", w))
    return rows + _cold_parts(n, evict)


def _cold_p50(fn, n: int, evict) -> float:
    times = []
    for i in range(n):
        evict()
        t = time.perf_counter_ns()
        fn(i)
        times.append((time.perf_counter_ns() - t) / 1e3)
    return statistics.median(times)


def _cold_parts(n: int, evict) -> list[Row]:
    data = bytes(range(256))[:150]           # about a Write carrying a SYN
    mac = _cold_p50(lambda i: wire._sign(SECRET, data), n, evict)
    sha = _cold_p50(lambda i: hmac.new(SECRET, data, hashlib.sha256).digest(), n, evict)
    view = View(1, MEMBERS, 3, MEMBERS)
    keys = make_keys(n, seed=5)
    ranked = _cold_p50(lambda i: view._steered_chain(keys[i]), n, evict)
    ranked_py = _cold_p50(lambda i: view._steered_chain_py(keys[i]), n, evict)
    # a Write carrying a SYN, encoded and decoded: wire's fast paths, compiled and in Python
    write = Frame("lb1", 3, 2, 7, 12, 11, Write(keys[0], 672137217, "nf1", bytes(60), 7))
    payload = wire.encode(write, SECRET)

    def codec(encode, decode):
        return lambda i: decode(encode(write, SECRET), SECRET)
    compiled = _cold_p50(codec(wire._encode_fast, wire._decode_fast), n, evict)
    python = _cold_p50(codec(wire._encode_fast_py, wire._decode_fast_py), n, evict)
    if wire._decode_fast(payload, SECRET) != write:
        raise RuntimeError("the chain frame codec does not give back the frame it encoded")
    return [Row("frame_mac_cold_us", mac, "us", "HMAC-SHA256, cold", sha),
            Row("chain_rank_cold_us", ranked, "us", "in Python, cold", ranked_py),
            Row("chain_frame_codec_cold_us", compiled, "us", "in Python, cold", python)]


def run(scale: float = 1.0, repeat: int = 3) -> list[Row]:
    """Every measurement; ``scale`` multiplies the numbers of keys."""
    def size(n):
        return max(10, int(n * scale))
    return [*bench_cached_lookups(size(20_000), repeat),
            *bench_inserts(size(5_000), repeat),
            *bench_wire(size(2_000)),
            *bench_memory(size(10_000)),
            *bench_first_packet(size(200))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench-engine",
                   help="results root (default: %(default)s)")
    p.add_argument("--run-id", help="run folder name (default: a timestamp)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the numbers of keys (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions, best kept (default 3)")
    args = p.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        p.error("--scale must be > 0 and --repeat >= 1")
    started = time.perf_counter()
    rows = run(args.scale, args.repeat)
    try:
        run_dir = new_run_dir(args.out, args.run_id)
        path = write_csv(run_dir / CSV_NAME, rows)
        point_latest(run_dir)
    except (OSError, ValueError) as e:
        print(f"error: cannot write results under {args.out}: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s; "
          f"3-node chain, chain length 3, one process, Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
