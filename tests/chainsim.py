"""A deterministic network simulator for ``agents.chain`` nodes.

Events (frame deliveries, view deliveries, lookups, deletes, crashes, joins, ticks) sit in
one priority queue keyed by simulated time; a seeded ``random.Random`` decides loss,
duplication and delay (delay jitter reorders frames). Nothing reads a clock.
"""
from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from agents.chain import ChainNode, Decision, Forward, Send, View
from ryu_apps.policy import take_slot


def rider(node: str, key: bytes) -> bytes:
    """The packet a node's lookup of ``key`` hands to the engine (names both)."""
    return node.encode() + b"|" + key


@dataclass
class Fault:
    loss: float = 0.0
    dup: float = 0.0
    min_delay: float = 0.0005
    max_delay: float = 0.005
    view_stagger: float = 0.0   # views reach each node up to this much later


@dataclass
class Sim:
    members: list[str]
    chain_len: int
    seed: int = 0
    fault: Fault = field(default_factory=Fault)
    tick_every: float = 0.05
    tombstone_ttl: float = 1e9
    variant: str = "steered"   # agents.chain.VARIANTS

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.epoch = 1
        self._slots: list[str] = []            # the gateway's slots ('' = empty)
        self.view = self._view(1, tuple(self.members))
        self.nodes = {m: self._new_node(m, self.view) for m in self.members}
        self.crashed: set[str] = set()
        self.decisions: list[tuple[float, str, bytes, str]] = []
        self.released: list[tuple[str, bytes, str]] = []     # decisions whose packet a tail sent
        self.forwards: list[tuple[float, str, bytes, str, bytes]] = []  # t, tail, key, nf, packet
        self.lookups: list[tuple[float, str, bytes]] = []
        self.deleted: dict[bytes, float] = {}      # key -> when its delete was issued
        self.sent_frames = 0
        self._q: list = []
        self._n = itertools.count()
        self.checks = []          # callables run after every event
        self.at(self.tick_every, "tick")

    def _new_node(self, name: str, view: View) -> ChainNode:
        return ChainNode(name, view, tombstone_ttl=self.tombstone_ttl)

    def _view(self, epoch: int, members: tuple[str, ...]) -> View:
        """Chains placed by gateway slots as the controller keeps them: a member keeps its
        slot, a leaver's slot is empty, a joiner takes the first empty one."""
        self._slots = [m if m in members else "" for m in self._slots]
        for m in members:
            if m not in self._slots:
                take_slot(self._slots, m)
        return View(epoch, members, self.chain_len, tuple(self._slots), variant=self.variant)

    # ---------------------------------------------------------------- scheduling

    def at(self, t: float, kind: str, *args) -> None:
        heapq.heappush(self._q, (t, next(self._n), kind, args))

    def lookup(self, t: float, node: str, key: bytes, nf: str) -> None:
        self.at(t, "lookup", node, key, nf)

    def delete(self, t: float, node: str, key: bytes) -> None:
        self.at(t, "delete", node, key)

    def crash(self, t: float, node: str, detect_after: float = 0.3) -> None:
        self.at(t, "crash", node)
        self.at(t + detect_after, "remove", node)

    def join(self, t: float, node: str) -> None:
        self.at(t, "join", node)

    # ---------------------------------------------------------------- running

    def run(self, until: float) -> None:
        while self._q and self._q[0][0] <= until:
            t, _, kind, args = heapq.heappop(self._q)
            self.now = max(self.now, t)
            getattr(self, "_do_" + kind)(*args)
            for check in self.checks:
                check(self)
        self.now = until

    def _do_tick(self) -> None:
        for name, node in list(self.nodes.items()):
            if name not in self.crashed:
                self._apply(name, node.tick(self.now))
        self.at(self.now + self.tick_every, "tick")

    def _apply(self, src: str, actions) -> None:
        f = self.fault
        for a in actions:
            if isinstance(a, Decision):
                self.decisions.append((self.now, src, a.key, a.nf))
                if a.released:
                    self.released.append((src, a.key, a.nf))
            elif isinstance(a, Forward):
                self.forwards.append((self.now, src, a.key, a.nf, a.packet))
            elif isinstance(a, Send):
                self.sent_frames += 1
                if self.rng.random() < f.loss:
                    continue
                copies = 2 if self.rng.random() < f.dup else 1
                for _ in range(copies):
                    delay = self.rng.uniform(f.min_delay, f.max_delay)
                    self.at(self.now + delay, "deliver", src, a.dst, a.msg)
            else:
                raise AssertionError(f"unknown action {a!r}")

    def _alive(self, name: str) -> bool:
        return name in self.nodes and name not in self.crashed

    def _do_deliver(self, src, dst, msg) -> None:
        if self._alive(dst):
            self._apply(dst, self.nodes[dst].receive(src, msg, self.now))

    def _do_lookup(self, node, key, nf) -> None:
        if self._alive(node):
            self.lookups.append((self.now, node, key))
            packet = rider(node, key)            # the first packet of a lookup rides with it
            self._apply(node, self.nodes[node].lookup(key, nf, self.now, packet))

    def _do_delete(self, node, key) -> None:
        """As an LB agent does: a connection ends only after a decision was made for it."""
        if not self._alive(node):
            return
        if key not in self.nodes[node].cache:
            self.at(self.now + 0.25, "delete", node, key)
            return
        self.deleted.setdefault(key, self.now)
        self._apply(node, self.nodes[node].delete(key, self.now))

    def _do_crash(self, node) -> None:
        self.crashed.add(node)

    def _do_remove(self, node) -> None:
        members = tuple(m for m in self.view.members if m != node)
        if members:
            self._new_view(members)

    def _do_join(self, node) -> None:
        self._new_view(self.view.members + (node,), joiner=node)

    def _new_view(self, members, joiner=None) -> None:
        self.epoch += 1
        self.view = self._view(self.epoch, members)
        if joiner is not None:
            self.nodes[joiner] = self._new_node(joiner, self.view)
            self._apply(joiner, self.nodes[joiner].tick(self.now))
        for m in members:
            if m != joiner:
                delay = self.rng.uniform(0, self.fault.view_stagger)
                self.at(self.now + delay, "view", m, self.view)

    def _do_view(self, node, view) -> None:
        if self._alive(node):
            self._apply(node, self.nodes[node].set_view(view, self.now))

    # ---------------------------------------------------------------- queries

    def live_nodes(self) -> list[str]:
        return [m for m in self.view.members if m not in self.crashed]

    def decided(self) -> dict[bytes, set[str]]:
        out: dict[bytes, set[str]] = {}
        for _, _, key, nf in self.decisions:
            out.setdefault(key, set()).add(nf)
        return out
