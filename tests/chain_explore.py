"""An adversary for the chain engine (``agents.chain``): a model world in which every
nondeterministic step is an explicit choice, a bounded exhaustive explorer over those choices,
a randomized stress, oracles, and delta-debugged, replayable traces.

Independent of ``tests/chainsim.py``'s random network: nothing here is timed or random except
the stress's choice of the next step.

The world
---------
``World(cfg)`` holds N ``ChainNode``s (``n1..n4``, joiners ``j1..``), a controller model, an
agent model and a network. A step is one ``Choice`` (a tuple):

- ``("deliver", src, dst, frame)``: one frame in flight reaches ``dst``. The oldest frame of
  each link (src, dst) may go at any time (frames of different links interleave freely: the
  engine's links are FIFO over raw frames); a later frame of a link overtaking an older one is
  a reordering and costs one of ``cfg.max_delays``;
- ``("drop", src, dst, frame)``: it is lost (``cfg.max_drops``); ``("dup", src, dst,
  frame)``: a copy of it is delivered and the frame stays in flight (``cfg.max_dups``). Pure
  acks are delivered at once, in order, unless ``cfg.ack_choices``;
- ``("tick", dt)``: time advances by ``dt`` and every live node's ``tick`` runs (retry and
  tombstone_ttl timers fire when due; ``cfg.max_ticks``); ``("tick1", node)``: one node's
  timers at the current time (stress, ``cfg.split_ticks``). The exhaustive configurations set
  ``rto`` past the explored horizon, so a lost frame is resent only by ``heal()`` (a
  retransmission is a duplicate, explored as one); ``link-layer-L2`` keeps the real rto;
- ``("lookup", i)``: the agent's i-th lookup of ``cfg.lookups`` (node, key, proposal): a new
  connection's first packet at that node. The packet handed to the engine is a *rider* naming
  the node, the key and the lookup (``rider``). A node that knows the proposal's NF failed
  proposes another (as ``Datapath``'s picker does);
- ``("delete", i)``: the i-th delete of ``cfg.deletes`` (node, key): the connection ended
  there; enabled, as in ``Datapath.housekeeping``, only while that node caches the key;
- ``("forget", node, key)``: the node forgets its cached answer (stress only);
- ``("event", i)``: the next controller / environment event of ``cfg.events``, in order:
  ``("crash", n)`` n stops forever (frames to it vanish), ``("remove", n)`` the controller
  makes a view without n (a live n may or may not get it), ``("join", j)`` a view with a new
  member j (created when its first view reaches it, as ``Datapath.view`` does),
  ``("readmit", n)`` a view naming a removed n again (a later ``View.since``: a node that never
  heard of its removal learns it from that), ``("restart", n)`` n's agent restarts under its
  name within the view (faster than the heartbeat timeout: no view changes; a fresh engine
  with a higher incarnation, its lookups lost with the old process), ``("fail", nf)`` a view
  marking nf failed.
  With ``cfg.stable_losses`` a crash or removal waits until every live member has the newest
  view and is synced (at most L-1 replicas lost at a time);
- ``("view", node, epoch)``: the controller's view ``epoch`` reaches ``node`` (each node
  separately, in any order, skipping older ones; a node ignores a view not newer than its own).
  As ``Datapath.view`` does: ``set_view``, then ``purge_nf(nf)`` for each newly failed NF, then
  every lookup still pending there is proposed anew through ``lookup`` (no packet).

Views are ``View(epoch, members, chain_len, steering, since, variant)`` with the gateway
slots as ``ryu_apps.policy.take_slot`` keeps them (a member keeps its slot, a leaver's slot
empties, a joiner takes the first empty one), as in ``chainsim.Sim._view``, and the protocol
variant ``cfg.variant`` (``agents.chain.VARIANTS``; ``with_variant``): every configuration
runs under either. A configuration's placement constraints name chains, which ``pick_keys``
satisfies under the variant's placement (gateway slots, or the ``patent`` ring), so a key
keeps its roles (who heads, who is the tail, who asks from outside the chain) in both.

Before the first choice every node starts (``tick``) and the start-up ``SyncDone``s and acks
are delivered in order: exploration starts from a synced, quiet cluster.

``heal()`` ends a run: the controller removes crashed members, the newest view reaches every
live member, every frame in flight is delivered in order and time advances in rto steps while
anything is sent, then until nothing has been sent for ``rto + retry`` seconds (past
``tombstone_ttl`` too when it is short), at most ``cfg.heal_time`` simulated seconds. The
network is then *quiet* (nothing in flight, no member's timer sends anything; a removed node
that never heard of its removal may go on retransmitting to members that ignore it), or it
is not (a liveness violation). A live node outside the newest view gets no view from heal().

Oracles
-------
Checked after every step (``World.check_step``):

- ``at-most-once``: a lookup's first packet is sent at most once in total: each ``Forward`` of
  its rider by a tail counts one send, and the asker's ``Decision`` with ``released=False``
  counts one (the agent then sends its held packets, the first one included). Two sends of one
  rider (two Forwards, or a Forward and an unreleased decision, in either order) violate it.
  As ``Datapath`` does, a packet for an NF the sending node knows failed is dropped, not sent.
  A second send after the forwarding tail crashed, left the view (in a view made since it
  forwarded, even if a later one names it again) or restarted, or after the asker's life
  ended (re-admitted, restarted), is reported as ``at-most-once/tail-left``; one after the
  entry it was forwarded under was deleted (a tombstone of a higher version seen: another
  node's insert of another NF may then own the key) as ``at-most-once/deleted`` (the engine's
  contract allows both: at least once then).
- ``at-least-once``: a decision with ``released=True`` means a tail forwarded the rider of
  *that* lookup: its rider must have been Forwarded before (the tail forwards in the same step
  as it answers), to an NF not failed. At the end, every decided lookup's rider was sent
  exactly once.
- ``split``: a decision with ``released=True`` names the NF its rider was forwarded to (else
  the connection's first packet went to one NF and the rest to another, which drops them:
  ``nf_conntrack_tcp_loose=0``), unless that NF has failed since (the packet is lost with it,
  as any packet in flight to a failing NF).
- ``agreement``: every decision (``Decision``, and ``Forward``, which sends to an NF) has a
  version: the decision's answer's (read from ``node.cache`` after the step; a cache hit has
  the cached version) or the forwarding tail's record. (a) Two decisions of one key and version
  name the same NF, and the same as any committed copy of that version (a record with
  ``committed``, an ``Ack``, an ``Answer`` or a committed ``SyncEntry``, anywhere): no two nodes
  hold different committed live values for one key version. (b) Two decisions of one key that
  name different NFs are *separated by a delete*: some tombstone of the key (a record with
  ``nf == ''`` seen in any store, or a tombstone ``Write``/``Sync``/``Ack`` on the wire) has a
  version strictly between theirs. A version above a tombstone's is committed only after it
  (chain order), so this is "not separated by a committed delete -> the same NF".
  Frames are scanned when first sent (a retransmission is not a new claim). A key's history
  is kept when no live node stores it any more (its tombstones expired everywhere: the engine
  starts its versions above the earlier life's), and if its newest committed or decided
  version was live then, a decided value left the table without a delete (``durability``).
- ``failed-nf`` (step form): no node decides an NF that every live member of the newest view
  knows failed (earlier, while the view spreads, such a decision resets the connection: the
  agent drops its packets, and the lookup counts for neither packet oracle).
- ``freshness``: a lookup that missed the cache, issued after a committed tombstone of its key
  was seen, is not decided with a version below that tombstone (a linearizable lookup).
- ``prefix``: for two neighbours of a key's chain, both synced in the same epoch, the
  successor's version of the key never exceeds its predecessor's (chain replication's prefix
  property; as ``test_chain_properties``), except a committed tombstone the predecessor has
  already expired.

The oracles read engine state beyond the API: ``store`` records (``ver``, ``nf``,
``committed``), ``cache``, ``synced``, ``view``, ``_pending``, and ``vars(node)`` for hashing.

Checked after ``heal()`` (``World.check_end``), on the live members of the newest view:

- ``liveness``: the network went quiet, and no lookup is pending at a live member of the
  current view (the oracle reads ``node._pending`` and the agent model's lookups).
- ``failed-nf``: no committed entry (``replica()``) names an NF a view marked failed (every
  live member has that view and the network is quiet).
- ``coherence``: every cache entry ``(ver, nf)`` of a live member equals the committed record
  at the key's tail; a deleted key is cached nowhere.
- ``durability``: a decided value stays in the table until deleted: for a key whose newest
  decided version no tombstone follows, every member of its chain holds that NF committed.
- ``settled``: every live member is synced, holds nothing uncommitted, and the members of a
  key's chain hold the same committed value (as ``test_chain_properties``' check 3).
- ``at-least-once`` (end form, above).

Exploration
-----------
``explore(cfg, seconds, depth)``: iterative-deepening depth-first search over the enabled
choices (in-order deliveries first, then the agent's and the controller's steps, ticks,
reorderings, drops, duplicates), bounded by the depth and by ``cfg``'s budgets, with

- sleep sets: two choices at different nodes on different links, using no shared budget (a
  delivery, a view delivery, a delete at n vs. the same at m) commute, and are not explored in
  both orders; ticks, lookups and events depend on everything;
- state matching: ``World.state_key`` hashes every node's state (``vars(node)``, times relative
  to ``now`` and capped past the largest timer), the in-flight multiset, the agent's and the
  controller's progress, the remaining budgets and the oracles' history; a state seen before
  with at least as much depth left and a sleep set within the current one is pruned (only the
  choices asleep then and awake now are explored again).

Every state whose lookups are all issued (``heal_at="complete"``; or every state, or the
leaves) is healed on a copy and checked. ``Stats`` says how deep the search was complete
(every choice sequence up to that length) and whether the whole bounded space was.
``BUDGETS`` is the portfolio of (drops, dups, delays, ticks) budgets the tests run per
configuration (``with_budget``).

``stress(cfg, seeds)``: random enabled choices (weighted), ``cfg.stress_depth`` steps, then heal.

On a violation, ``minimize`` delta-debugs the trace (ddmin over the choices, then one at a time;
a choice no longer enabled is skipped), keeping the same oracle violated; ``replay(cfg, trace)``
runs a trace (strictly, or ``lenient``), and ``format_trace`` prints it in the engine's terms,
each choice with what the node did (who sends what to whom). ``compact`` writes a choice as
text (``"deliver n1->n2 Write"``: the oldest Write in flight from n1 to n2, ``"lookup 0"``,
``"view n3 2"``, ``"event 0"``, ``"tick 1.0"``, ...; ``compact_trace`` adds ``seqN`` to a
frame that is not the oldest of its kind on its link, and ``toN``, the incarnation it is
addressed to, to one that is not the oldest with that number either) that ``replay`` reads
back, so a trace survives most changes of sequence numbers.
``python tests/chain_explore.py [configs] --seconds S`` runs the explorer from the shell
(``--stress``, ``--engine MUTANT`` or ``git:REV``, ``--variant patent``).

Engines: ``World(cfg, engine=...)`` takes any ``ChainNode``-compatible class; ``mutant(name)``
builds scratch mutant copies of ``agents/chain.py`` (text edits of the current source, loaded as
modules of their own) to check that the explorer can fail.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass
from typing import Any

if __name__ == "__main__":                    # run as a script: the repository on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agents.chain as chain_mod  # noqa: E402
from agents.chain import View  # noqa: E402
from agents.keys import flow_key  # noqa: E402
from agents.messages import (Ack, Answer, DeleteReq, Frame, Gone, InsertReq, Query, Sync,
                             SyncDone, SyncEntry, Write)  # noqa: E402
from ryu_apps.policy import take_slot  # noqa: E402

MAX_RTO = getattr(chain_mod, "MAX_RTO", 1.0)

Choice = tuple

# ----------------------------------------------------------------------------- keys

CANDIDATE_KEYS = [flow_key("10.0.1.1", "10.0.2.1", 6, 10000 + i, 5201) for i in range(4000)]


def rider(node: str, key: bytes, i: int) -> bytes:
    """The first packet of lookup ``i`` (at ``node``, of ``key``): names all three."""
    return node.encode() + b"|" + key + b"#" + str(i).encode()


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class Config:
    """One small world and the adversary's budgets.

    ``keys``: per key, placement constraints ``((view index, chain prefix), ...)``: the key's
    chain in the index-th view of the run (0: the first; then one per view-making event, in
    ``events`` order) starts with that prefix. ``lookups``: (node, key index, proposal);
    ``deletes``: (node, key index[, lookups that must be decided first]); ``events``: ordered
    controller / environment events.
    """
    name: str
    members: tuple = ("n1", "n2", "n3")
    chain_len: int = 2
    keys: tuple = (((0, ("n1", "n2")),),)
    lookups: tuple = (("n1", 0, "nf1"), ("n3", 0, "nf2"))
    deletes: tuple = ()
    events: tuple = ()
    nfs: tuple = ("nf1", "nf2", "nf3")
    max_drops: int = 0
    max_dups: int = 0
    max_delays: int = 0           # deliveries of a frame not the oldest in flight on its link
    max_ticks: int = 1
    dts: tuple = (1.0,)           # tick sizes
    rto: float = 5.0              # past the exploration's horizon: a lost frame is resent by
                                  # heal() (a retransmission is a duplicate: see max_dups)
    retry: float = 1.0
    tombstone_ttl: float = 60.0
    max_delete_tries: int = 10
    ack_choices: bool = False     # pure acks: choices too (else delivered at once, in order)
    split_ticks: bool = False     # ("tick1", node) choices (stress)
    forget: bool = False          # ("forget", node, key) choices (stress)
    stable_losses: bool = False   # a crash / remove waits until every live member has the
                                  # newest view and is synced (at most one loss at a time)
    heal_time: float = 40.0
    stress_depth: int = 60
    variant: str = "steered"      # the protocol variant of every view (agents.chain.VARIANTS)


_VIEW_EVENTS = ("remove", "join", "readmit", "fail")     # ("crash", "restart": no view)


def _next_slots(slots: list[str], members: tuple) -> list[str]:
    slots = [m if m in members else "" for m in slots]
    for m in members:
        if m not in slots:
            take_slot(slots, m)
    return slots


def planned_views(cfg: Config) -> list[tuple[str, ...]]:
    """The member lists of the run's views: the first, then one per view-making event."""
    members = tuple(cfg.members)
    out = [members]
    for ev in cfg.events:
        if ev[0] == "remove":
            members = tuple(m for m in members if m != ev[1])
        elif ev[0] in ("join", "readmit"):
            members = members + (ev[1],)
        if ev[0] in _VIEW_EVENTS:
            out.append(members)
    return out


_KEY_CACHE: dict = {}


def pick_keys(cfg: Config) -> list[bytes]:
    """Keys satisfying ``cfg.keys``' placement constraints (distinct, deterministic)."""
    ck = (cfg.members, cfg.chain_len, cfg.keys, cfg.events, cfg.variant)
    if ck in _KEY_CACHE:
        return _KEY_CACHE[ck]
    slots: list[str] = []
    views = []
    for i, members in enumerate(planned_views(cfg)):
        slots = _next_slots(slots, members)
        views.append(View(i + 1, members, cfg.chain_len, tuple(slots), variant=cfg.variant))
    out: list[bytes] = []
    for cons in cfg.keys:
        for k in CANDIDATE_KEYS:
            if k in out:
                continue
            if all(views[vi].chain(k)[:len(prefix)] == tuple(prefix) for vi, prefix in cons):
                out.append(k)
                break
        else:
            raise ValueError(f"{cfg.name}: no key placed as {cons}")
    _KEY_CACHE[ck] = out
    return out


# ----------------------------------------------------------------------------- violations

class Violation(AssertionError):
    def __init__(self, oracle: str, msg: str):
        super().__init__(f"[{oracle}] {msg}")
        self.oracle = oracle
        self.msg = msg


# ----------------------------------------------------------------------------- the world

class World:
    """N chain nodes, the controller, the agents and the network (see the module docstring)."""

    def __init__(self, cfg: Config, engine: type = chain_mod.ChainNode, *, log: bool = False):
        self.cfg = cfg
        self.engine = engine
        self.keys = pick_keys(cfg)
        self.names = {k: f"k{i}" for i, k in enumerate(self.keys)}
        self.now = 0.0
        self.steps = 0
        self.slots: list[str] = []
        self.since: dict[str, int] = {}                  # member -> epoch admitted in
        self.views: list[tuple[View, frozenset]] = []    # index epoch-1: (view, failed NFs)
        self.nodes: dict[str, Any] = {}
        self.crashed: set[str] = set()
        self.agent_epoch: dict[str, int] = {}
        self.known_failed: dict[str, frozenset] = {}
        self.flight: list[tuple[str, str, Frame]] = []
        self.event_i = 0
        self.drops = cfg.max_drops
        self.dups = cfg.max_dups
        self.delays = cfg.max_delays
        self.ticks = cfg.max_ticks
        self.sent = 0
        self.msent = 0                                   # ... by members of the newest view
        # the agent model
        # new | pending | decided | dropped (its node left the view) | dead (crashed) |
        # reset (decided to an NF its node knows failed: the agent drops the connection)
        self.lk_state = ["new"] * len(cfg.lookups)
        self.outstanding: dict[tuple[str, bytes], int] = {}
        self.del_done = [False] * len(cfg.deletes)
        self.cache_hit: set[int] = set()                 # lookups decided from the cache
        self.floor: dict[int, int] = {}                  # lookup -> committed tombstone at issue
        # the oracles' history
        self.sends: Counter = Counter()                  # rider -> sends
        self.fwd_by: dict[bytes, str] = {}               # rider -> the tail that forwarded it
        self.lost: dict[bytes, str] = {}                 # rider -> who sent it to a failed NF
        self.fwd_epoch: dict[bytes, int] = {}            # rider -> newest view when forwarded
        self.fwd_life: dict[bytes, int] = {}             # rider -> its tail's incarnation then
        self.ask_life: dict[int, int] = {}               # lookup -> its asker's incarnation
        self.fwd_nf: dict[bytes, str] = {}               # rider -> the NF it was forwarded to
        self.fwd_ver: dict[bytes, int | None] = {}       # rider -> the version forwarded under
        self.scanned: dict[tuple, int] = {}              # link -> newest seq scanned
        self.rider_of = {rider(n, self.keys[k], i): i for i, (n, k, _) in enumerate(cfg.lookups)}
        self.decided: dict[tuple[bytes, int], str] = {}  # (key, ver) -> nf decided
        self.committed: dict[tuple[bytes, int], str] = {}
        self.tombs: dict[bytes, set[int]] = {}
        self.ctombs: dict[bytes, int] = {}               # newest committed tombstone seen
        self.log: list[str] | None = [] if log else None
        self.last_actions: list = []
        # start: the first view, every node started and the start-up traffic delivered
        self._new_view(tuple(cfg.members), frozenset())
        view = self.views[0][0]
        for m in cfg.members:
            self._create(m, view)
        self._settle_start()

    # ------------------------------------------------------------------ helpers

    def clone(self) -> "World":
        return pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    def kname(self, key: bytes) -> str:
        return self.names.get(key, key.hex()[:8])

    def latest(self) -> tuple[View, frozenset]:
        return self.views[-1]

    def alive(self, n: str) -> bool:
        return n in self.nodes and n not in self.crashed

    def _create(self, name: str, view: View, incarnation: int = 0) -> None:
        c = self.cfg
        kw = dict(rto=c.rto, retry=c.retry, tombstone_ttl=c.tombstone_ttl,
                  max_delete_tries=c.max_delete_tries)
        try:
            node = self.engine(name, view, incarnation=incarnation, **kw)
        except TypeError:        # an engine from before incarnations were passed in
            node = self.engine(name, view, **kw)
        self.nodes[name] = node
        self.agent_epoch[name] = view.epoch
        self.known_failed[name] = self.views[view.epoch - 1][1]
        self._feed(name, node.tick(self.now))

    def _new_view(self, members: tuple, failed: frozenset) -> View:
        self.slots = _next_slots(self.slots, members)
        epoch = len(self.views) + 1
        self.since = {m: self.since.get(m, epoch) for m in members}
        view = View(epoch, members, self.cfg.chain_len, tuple(self.slots),
                    tuple(self.since[m] for m in members), variant=self.cfg.variant)
        self.views.append((view, failed))
        return view

    def _settle_start(self) -> None:
        for _ in range(3):
            self._drain_fifo()
            for n in sorted(self.nodes):
                self._feed(n, self.nodes[n].tick(self.now))
        self._drain_fifo()
        self._scan()

    def _drain_fifo(self, limit: int = 20000) -> int:
        n = 0
        while self.flight and n < limit:
            src, dst, frame = self.flight.pop(0)
            self._recv(src, dst, frame)
            n += 1
        return n

    def _recv(self, src: str, dst: str, frame: Frame) -> None:
        if self.alive(dst):
            self._feed(dst, self.nodes[dst].receive(src, frame, self.now))

    def _note(self, s: str) -> None:
        if self.log is not None:
            self.log.append(s)

    # ------------------------------------------------------------------ actions

    def _feed(self, name: str, actions: list) -> None:
        node = self.nodes[name]
        for a in actions:
            kind = type(a).__name__          # by name: a scratch engine has its own classes
            if kind == "Send":
                self.sent += 1
                if name in self.views[-1][0].members:
                    self.msent += 1
                f = a.msg
                if f.seq:
                    link = (name, a.dst, f.src_inc)
                    if f.seq > self.scanned.get(link, 0):  # not a retransmission
                        self.scanned[link] = f.seq
                        self._scan_body(f.body)
                if self.log is not None and a.msg.body is not None:
                    self._note(f"    {name}->{a.dst} {self.fmt_frame(a.msg)}")
                if a.dst in self.crashed:
                    continue
                self.flight.append((name, a.dst, a.msg))
            elif kind == "Decision":
                self._on_decision(name, node, a)
            elif kind == "Forward":
                self._on_forward(name, node, a)
            else:
                raise Violation("protocol", f"{name}: unknown action {a!r}")

    def _on_decision(self, name: str, node, d: Decision) -> None:
        hit = node.cache.get(d.key)
        ver = hit[0] if hit is not None and hit[1] == d.nf else None
        i = self.outstanding.pop((name, d.key), None)
        self._note(f"    {name}: Decision({self.kname(d.key)} -> {d.nf}"
                   f"{' released' if d.released else ''}) v{ver} for lookup {i}")
        if ver is not None:
            self._decide(d.key, ver, d.nf, f"{name} decided")
        if i is None:
            return                                  # a cache hit of a lookup not modelled
        self.lk_state[i] = "decided"
        pkt = rider(*self._lk(i))
        failed = d.nf in self.known_failed.get(name, ())
        if failed and all(d.nf in self.known_failed.get(m, ()) for m in self.latest()[0].members
                          if self.alive(m)):
            raise Violation("failed-nf", f"{name} decides {self.kname(d.key)} -> {d.nf}"
                            f"{' (released)' if d.released else ''}, which every live member "
                            f"knows failed")
        if d.released:
            sent_to = self.fwd_nf.get(pkt)
            if (self.sends[pkt] >= 1 and sent_to is not None and sent_to != d.nf
                    and sent_to not in self.latest()[1]):   # (lost with a failed NF: fine)
                raise Violation("split", f"{name}'s lookup {i} of {self.kname(d.key)} decided "
                                f"{d.nf} released, but its packet {self.fmt_pkt(pkt)} went to "
                                f"{sent_to} (forwarded by {self.fwd_by.get(pkt)})")
            if self.sends[pkt] < 1:
                why = (f"{self.lost[pkt]} forwarded it to a failed NF" if pkt in self.lost
                       else "no tail forwarded it")
                raise Violation("at-least-once",
                                f"{name}'s lookup {i} of {self.kname(d.key)} decided released, "
                                f"but its packet {self.fmt_pkt(pkt)} was not sent: {why}")
        elif failed:
            # the agent drops the connection's packets (no MAC for a failed NF): a transient
            # outcome while the failure's view spreads (a bug once every member has it, above)
            self.lost[pkt] = name
            self.lk_state[i] = "reset"
        else:
            self.sends[pkt] += 1
            if self.sends[pkt] > 1:
                raise Violation(self._twice(pkt),
                                f"{name} sends the first packet {self.fmt_pkt(pkt)} of lookup "
                                f"{i} (decision released=False) after {self.fwd_by.get(pkt)} "
                                f"forwarded it")
        if ver is not None and i not in self.cache_hit:
            floor = self.floor.get(i, 0)
            if ver < floor:
                raise Violation("freshness",
                                f"lookup {i} at {name} of {self.kname(d.key)}, issued after "
                                f"tombstone v{floor} committed, decided v{ver} -> {d.nf}")

    def _on_forward(self, name: str, node, f: Forward) -> None:
        rec = node.store.get(f.key)
        ver = rec.ver if rec is not None and rec.nf == f.nf else None
        self._note(f"    {name}: Forward({self.kname(f.key)} -> {f.nf}, "
                   f"{self.fmt_pkt(f.packet)}) v{ver}")
        if ver is not None:
            self._decide(f.key, ver, f.nf, f"{name} forwarded to")
        if f.nf in self.known_failed.get(name, ()):
            self.lost[f.packet] = name              # dropped: this agent knows nf failed
            return
        self.sends[f.packet] += 1
        prev = self.fwd_by.get(f.packet)
        self.fwd_by[f.packet] = name
        self.fwd_life.setdefault(f.packet, self.nodes[name].inc)
        self.fwd_nf.setdefault(f.packet, f.nf)
        self.fwd_epoch.setdefault(f.packet, len(self.views))
        self.fwd_ver.setdefault(f.packet, ver)
        if self.sends[f.packet] > 1:
            i = self.rider_of.get(f.packet)
            if prev is not None:
                self.fwd_by[f.packet] = prev
            raise Violation(self._twice(f.packet),
                            f"{name} forwards the first packet {self.fmt_pkt(f.packet)} of "
                            f"lookup {i}, already sent ({self.sends[f.packet] - 1} time(s) "
                            f"before; lookup state {self.lk_state[i] if i is not None else '?'})")

    def _twice(self, pkt: bytes) -> str:
        """A second send: ``at-most-once``, or ``at-most-once/tail-left`` when the tail that
        forwarded it has crashed or left the view since, ``at-most-once/deleted`` when the
        entry it was forwarded under has been deleted since (the engine's contract sends it
        at least once then)."""
        t = self.fwd_by.get(pkt)
        if t is not None and (t in self.crashed or self.nodes[t].inc != self.fwd_life.get(pkt)
                              or any(t not in v.members
                                     for v, _ in self.views[self.fwd_epoch.get(pkt, 1) - 1:])):
            return "at-most-once/tail-left"
        i = self.rider_of.get(pkt)
        if i is not None and self.nodes[self.cfg.lookups[i][0]].inc != self.ask_life.get(i):
            return "at-most-once/tail-left"        # (the asker's life ended: the same contract)
        ver = self.fwd_ver.get(pkt)
        if i is not None and ver is not None \
                and any(t > ver for t in self.tombs.get(self._lk(i)[1], ())):
            return "at-most-once/deleted"
        return "at-most-once"

    def _lk(self, i: int) -> tuple[str, bytes]:
        n, k, _ = self.cfg.lookups[i]
        return n, self.keys[k], i

    # ------------------------------------------------------------------ oracle bookkeeping

    def _decide(self, key: bytes, ver: int, nf: str, who: str) -> None:
        kn = self.kname(key)
        prev = self.decided.get((key, ver))
        if prev is not None and prev != nf:
            raise Violation("agreement", f"{who} {kn} v{ver} -> {nf}, decided -> {prev} before")
        c = self.committed.get((key, ver))
        if c is not None and c != nf:
            raise Violation("agreement", f"{who} {kn} v{ver} -> {nf}, committed -> {c!r}")
        self.decided[(key, ver)] = nf
        self._check_generations(key)

    def _check_generations(self, key: bytes) -> None:
        vs = sorted((v, nf) for (k, v), nf in self.decided.items() if k == key)
        tombs = self.tombs.get(key, set())
        for (v1, a), (v2, b) in zip(vs, vs[1:]):
            if a != b and not any(v1 < t < v2 for t in tombs):
                raise Violation("agreement",
                                f"{self.kname(key)} decided v{v1} -> {a} and v{v2} -> {b} with "
                                f"no delete between (tombstones {sorted(tombs)})")

    def _commit_val(self, key: bytes, ver: int, nf: str, where: str) -> None:
        prev = self.committed.get((key, ver))
        if prev is None:
            self.committed[(key, ver)] = nf
            d = self.decided.get((key, ver))
            if d is not None and d != nf:
                raise Violation("agreement", f"{where}: {self.kname(key)} v{ver} committed "
                                f"-> {nf!r}, decided -> {d}")
        elif prev != nf:
            raise Violation("agreement", f"{where}: {self.kname(key)} v{ver} committed -> "
                            f"{nf!r} and -> {prev!r}")

    def _tomb(self, key: bytes, ver: int) -> None:
        s = self.tombs.setdefault(key, set())
        s.add(ver)

    def _scan_body(self, body) -> None:
        t = type(body)
        if t is Write:
            if not body.nf:
                self._tomb(body.key, body.ver)
        elif t is Ack:
            if not body.nf:
                self._tomb(body.key, body.ver)
            self._commit_val(body.key, body.ver, body.nf, "Ack")
        elif t is Answer:
            self._commit_val(body.key, body.ver, body.nf, "Answer")
        elif t is Sync:
            for e in body.entries:
                if not e.nf:
                    self._tomb(e.key, e.ver)
                if e.committed:
                    self._commit_val(e.key, e.ver, e.nf, "Sync")

    def _scan(self) -> None:
        stored: set = set()
        for name, node in self.nodes.items():
            if name not in self.crashed:
                stored.update(node.store)
            for key, rec in node.store.items():
                if not rec.nf:
                    self._tomb(key, rec.ver)
                if rec.committed:
                    self._commit_val(key, rec.ver, rec.nf, f"{name}'s store")
                    if not rec.nf and rec.ver > self.ctombs.get(key, 0):
                        self.ctombs[key] = rec.ver
        for key in self.keys:
            if key not in stored and (key in self.tombs or any(
                    k == key for k, _ in self.committed)):
                self._new_era(key)

    def _new_era(self, key: bytes) -> None:
        """No live node stores ``key`` any more (its tombstones expired everywhere): unless
        the newest version known committed or decided was live, in which case a decided value
        left the table without a delete (``durability``). Its history stays: the engine's
        versions of a key never start again (``ChainNode._version_floor``), so a frame of
        its earlier life that arrives later is still judged against that life."""
        live = [v for (k, v), nf in list(self.committed.items()) + list(self.decided.items())
                if k == key and nf]
        tombs = self.tombs.get(key, set())
        if live and max(live) > max(tombs, default=0):
            raise Violation("durability", f"{self.kname(key)} v{max(live)} (committed or "
                            f"decided, never deleted) is in no live node's store")

    # ------------------------------------------------------------------ choices

    def choices(self) -> list[Choice]:
        c = self.cfg
        out: list[Choice] = []
        seen: set = set()
        first: dict[tuple, int] = {}
        for idx, (s, d, f) in enumerate(self.flight):
            first.setdefault((s, d), idx)
        inorder, reorder, drops, dups = [], [], [], []
        for idx, item in enumerate(self.flight):
            if item in seen:
                continue
            seen.add(item)
            s, d, f = item
            if first[(s, d)] == idx:
                inorder.append(("deliver", s, d, f))
            elif self.delays > 0:
                reorder.append(("deliver", s, d, f))
            if f.body is None and not c.ack_choices:
                continue
            if self.drops > 0:
                drops.append(("drop", s, d, f))
            if self.dups > 0:
                dups.append(("dup", s, d, f))
        out += inorder
        for i, (n, k, _) in enumerate(c.lookups):
            if self.lk_state[i] != "new" or not self.alive(n):
                continue
            key = self.keys[k]
            if (n, key) in self.outstanding:
                continue
            if any(self.lk_state[j] == "new" and c.lookups[j][:2] == (n, k) for j in range(i)):
                continue
            out.append(("lookup", i))
        for i, (n, k, *after) in enumerate(c.deletes):
            if not self.del_done[i] and self.alive(n) and self.keys[k] in self.nodes[n].cache:
                if all(self.lk_state[j] not in ("new", "pending") for j in
                       (after[0] if after else ())):
                    out.append(("delete", i))
        if self.event_i < len(c.events) and self._event_ok(c.events[self.event_i]):
            out.append(("event", self.event_i))
        for n in self._view_targets():
            for e in range(self.agent_epoch.get(n, 0) + 1, len(self.views) + 1):
                view = self.views[e - 1][0]
                if n not in self.nodes and n not in view.members:
                    continue
                out.append(("view", n, e))
        if self.ticks > 0:
            out += [("tick", dt) for dt in c.dts]
            if c.split_ticks:
                out += [("tick1", n) for n in sorted(self.nodes) if self.alive(n)]
        if c.forget:
            for n in sorted(self.nodes):
                if self.alive(n):
                    out += [("forget", n, k) for k in range(len(self.keys))
                            if self.keys[k] in self.nodes[n].cache]
        return out + reorder + drops + dups

    def _view_targets(self) -> list[str]:
        names = set(self.nodes)
        for v, _ in self.views:
            names.update(v.members)
        return sorted(n for n in names if n not in self.crashed)

    def stable(self) -> bool:
        """Every live member of the newest view has it and is synced."""
        view = self.latest()[0]
        return all(self.nodes[m].view.epoch == view.epoch and self.nodes[m].synced
                   for m in view.members if self.alive(m))

    def _event_ok(self, ev) -> bool:
        kind = ev[0]
        members = self.latest()[0].members
        if kind in ("crash", "remove", "restart") and self.cfg.stable_losses \
                and not self.stable():
            if not (kind == "remove" and ev[1] in self.crashed):
                return False
        if kind == "crash":
            return self.alive(ev[1])
        if kind == "remove":
            return ev[1] in members and len(members) > 1
        if kind == "join":
            return ev[1] not in members and ev[1] not in self.nodes
        if kind == "readmit":
            return ev[1] not in members and self.alive(ev[1])
        if kind == "restart":
            return ev[1] in members and self.alive(ev[1])
        if kind == "fail":
            return ev[1] not in self.latest()[1]
        raise ValueError(f"unknown event {ev!r}")

    def enabled(self, ch: Choice) -> bool:
        kind = ch[0]
        if kind in ("deliver", "drop", "dup"):
            item = ch[1:]
            if item not in self.flight:
                return False
            if kind == "drop":
                return self.drops > 0
            if kind == "dup":
                return self.dups > 0
            first = next(f for f in self.flight if f[:2] == item[:2])
            return first == item or self.delays > 0
        return ch in self.choices()

    # ------------------------------------------------------------------ steps

    def step(self, ch: Choice) -> None:
        """Apply one choice, then check the per-step oracles (raises ``Violation``)."""
        self.steps += 1
        kind = ch[0]
        self._note(self.fmt_choice(ch))
        if kind in ("deliver", "drop", "dup"):
            item = ch[1:]
            idx = self.flight.index(item)
            if kind == "deliver":
                first = next(i for i, f in enumerate(self.flight) if f[:2] == item[:2])
                if first != idx:
                    self.delays -= 1
                del self.flight[idx]
                self._recv(*item)
            elif kind == "drop":
                self.drops -= 1
                del self.flight[idx]
            else:
                self.dups -= 1
                self._recv(*item)
        elif kind == "tick":
            self.ticks -= 1
            self.now = round(self.now + ch[1], 6)
            for n in sorted(self.nodes):
                if self.alive(n):
                    self._feed(n, self.nodes[n].tick(self.now))
        elif kind == "tick1":
            self.ticks -= 1
            self._feed(ch[1], self.nodes[ch[1]].tick(self.now))
        elif kind == "lookup":
            self._lookup(ch[1])
        elif kind == "delete":
            n, k = self.cfg.deletes[ch[1]][:2]
            self.del_done[ch[1]] = True
            self._feed(n, self.nodes[n].delete(self.keys[k], self.now))
        elif kind == "forget":
            self.nodes[ch[1]].forget(self.keys[ch[2]])
        elif kind == "event":
            self._event(self.cfg.events[ch[1]])
            self.event_i += 1
        elif kind == "view":
            self._deliver_view(ch[1], ch[2])
        else:
            raise ValueError(f"unknown choice {ch!r}")
        self._after()

    def _lookup(self, i: int) -> None:
        n, k, nf = self.cfg.lookups[i]
        key = self.keys[k]
        node = self.nodes[n]
        self.outstanding[(n, key)] = i
        self.lk_state[i] = "pending"
        self.ask_life[i] = node.inc
        self.floor[i] = self.ctombs.get(key, 0)
        if key in node.cache:
            self.cache_hit.add(i)
        self._feed(n, node.lookup(key, self._propose(n, nf), self.now, rider(n, key, i)))

    def _propose(self, n: str, nf: str) -> str:
        failed = self.known_failed.get(n, frozenset())
        if nf not in failed:
            return nf
        return next((x for x in self.cfg.nfs if x not in failed), nf)

    def _event(self, ev) -> None:
        kind = ev[0]
        view, failed = self.latest()
        if kind == "crash":
            self.crashed.add(ev[1])
            self.flight = [f for f in self.flight if f[1] != ev[1]]
            for (n, key), i in list(self.outstanding.items()):
                if n == ev[1]:
                    self.lk_state[i] = "dead"
                    del self.outstanding[(n, key)]
        elif kind == "restart":
            n = ev[1]
            for (m, key), i in list(self.outstanding.items()):
                if m == n:
                    self.lk_state[i] = "dead"       # its buffered packets died with it
                    del self.outstanding[(m, key)]
            self._create(n, view, incarnation=self.nodes[n].inc + 1)
        elif kind == "remove":
            self._new_view(tuple(m for m in view.members if m != ev[1]), failed)
        elif kind in ("join", "readmit"):
            self._new_view(view.members + (ev[1],), failed)
        elif kind == "fail":
            self._new_view(view.members, failed | {ev[1]})

    def _deliver_view(self, n: str, epoch: int) -> None:
        view, failed = self.views[epoch - 1]
        if n not in self.nodes:
            self._create(n, view)
            return
        node = self.nodes[n]
        self.agent_epoch[n] = epoch
        self._feed(n, node.set_view(view, self.now))
        newly = sorted(failed - self.known_failed[n])
        self.known_failed[n] = self.known_failed[n] | failed
        for nf in newly:
            self._feed(n, node.purge_nf(nf, self.now))
        if newly:
            for (m, key), i in sorted(self.outstanding.items(), key=lambda x: x[1]):
                if m == n and key in getattr(node, "_pending", {}):
                    self._feed(n, node.lookup(key, self._propose(n, self.cfg.lookups[i][2]),
                                              self.now))

    def _after(self) -> None:
        if not self.cfg.ack_choices:
            acks = [f for f in self.flight if f[2].body is None]
            if acks:
                self.flight = [f for f in self.flight if f[2].body is not None]
                for f in acks:
                    self._recv(*f)
        self._reconcile()
        self._scan()
        self.check_step()

    def _reconcile(self) -> None:
        """Lookups the engine dropped (its node left the view) are no longer pending."""
        for (n, key), i in list(self.outstanding.items()):
            node = self.nodes.get(n)
            if node is not None and key not in getattr(node, "_pending", {key: 1}):
                self.lk_state[i] = "dropped"
                del self.outstanding[(n, key)]

    # ------------------------------------------------------------------ oracles

    def check_step(self) -> None:
        # prefix: a synced successor never holds a newer version than its synced predecessor
        live = {n: node for n, node in self.nodes.items() if n not in self.crashed}
        keys = set()
        for node in live.values():
            keys.update(node.store)
        for key in keys:
            done = set()
            for node in live.values():
                if not node.synced or node.removed:
                    continue
                chain = node.view.chain(key)
                if chain in done:
                    continue
                done.add(chain)
                for pred, succ in zip(chain, chain[1:]):
                    p, s = live.get(pred), live.get(succ)
                    if p is None or s is None or p.view.epoch != s.view.epoch:
                        continue
                    if not (p.synced and s.synced):
                        continue
                    srec = s.store.get(key)
                    if (p.version(key) == 0 and srec is not None and not srec.nf
                            and srec.committed):
                        continue          # p expired its committed tombstone (TTL) first
                    if s.version(key) > p.version(key):
                        raise Violation("prefix", f"{succ} holds v{s.version(key)} of "
                                        f"{self.kname(key)} ahead of its predecessor {pred} "
                                        f"(v{p.version(key)})")

    def heal(self) -> bool:
        """Remove crashed members, hand every live member the newest view, deliver
        everything, run the timers until quiet; True if the network went quiet."""
        c = self.cfg
        self._note("heal")
        view, failed = self.latest()
        if any(m in self.crashed for m in view.members):
            self._new_view(tuple(m for m in view.members if m not in self.crashed), failed)
            view = self.latest()[0]
        for m in view.members:
            if m not in self.crashed and self.agent_epoch.get(m, 0) < view.epoch:
                self._deliver_view(m, view.epoch)
                self._after()
        need = max(c.rto, MAX_RTO) + c.retry + 0.01   # every timer has had its chance
        if c.tombstone_ttl <= c.heal_time / 2:
            need = max(need, c.tombstone_ttl + c.rto)
        end = self.now + c.heal_time
        quiet_for = 0.0
        while self.now < end:
            self._drain_fifo()
            self._after()
            before = self.msent
            dt = min(c.rto, c.retry / 2) if quiet_for < c.retry else c.retry / 2
            self.now = round(self.now + dt, 6)
            for n in sorted(self.nodes):
                if self.alive(n):
                    self._feed(n, self.nodes[n].tick(self.now))
            self._drain_fifo()
            self._after()
            if self.msent == before:
                quiet_for += dt
                if quiet_for >= need:
                    return True
            else:
                quiet_for = 0.0
        return False

    def check_end(self, quiet: bool) -> None:
        view, failed = self.latest()
        members = [m for m in view.members if self.alive(m)]
        nodes = {m: self.nodes[m] for m in members}
        # liveness
        stuck = []
        for m, node in nodes.items():
            if node.view.epoch != view.epoch:
                continue
            for key in getattr(node, "_pending", {}):
                stuck.append(f"{m}: {self.kname(key)}")
            for (n, key), i in self.outstanding.items():
                if n == m and f"{m}: {self.kname(key)}" not in stuck:
                    stuck.append(f"{m}: {self.kname(key)} (lookup {i})")
        if stuck:
            raise Violation("liveness", f"after healing, lookups never decided: {stuck}"
                            + ("" if quiet else " (the network never went quiet)"))
        if not quiet:
            raise Violation("liveness", "after healing, the network never went quiet "
                            f"({len(self.flight)} frames in flight)")
        # failed NFs
        for m, node in nodes.items():
            bad = {self.kname(k): nf for k, nf in node.replica().items() if nf in failed}
            if bad:
                raise Violation("failed-nf", f"{m} holds committed entries of failed NFs {bad}")
        # coherence
        for m, node in nodes.items():
            for key, (ver, nf) in node.cache.items():
                tail = nodes.get(view.chain(key)[-1])
                rec = tail.store.get(key) if tail is not None else None
                truth = (rec.ver, rec.nf) if rec is not None and rec.committed else None
                if truth is None or not truth[1]:
                    raise Violation("coherence", f"{m} caches {self.kname(key)} -> v{ver} {nf}, "
                                    f"but the key is deleted at its tail "
                                    f"{view.chain(key)[-1]} ({truth})")
                if truth != (ver, nf):
                    raise Violation("coherence", f"{m} caches {self.kname(key)} -> v{ver} {nf}, "
                                    f"its tail holds v{truth[0]} {truth[1]}")
        # at least once, end form
        for i, st in enumerate(self.lk_state):
            if st == "decided":
                pkt = rider(*self._lk(i))
                if self.sends[pkt] != 1:
                    raise Violation("at-least-once" if self.sends[pkt] < 1 else "at-most-once",
                                    f"lookup {i}'s first packet sent {self.sends[pkt]} times"
                                    + (f" (dropped by {self.lost[pkt]}: a failed NF)"
                                       if pkt in self.lost else ""))
        # settled and durability
        for m, node in nodes.items():
            if not node.synced or node.uncommitted():
                raise Violation("settled", f"{m}: synced={node.synced}, uncommitted "
                                f"{ {self.kname(k): v for k, v in node.uncommitted().items()} }")
        for key in self.keys:
            chain = [m for m in view.chain(key) if m in nodes]
            vals = {m: nodes[m].replica().get(key) for m in chain}
            if len(set(vals.values())) > 1:
                raise Violation("settled", f"{self.kname(key)}: its chain holds {vals}")
            dec = [(v, nf) for (k, v), nf in self.decided.items() if k == key]
            if dec:
                vmax, nf = max(dec)
                if not any(t > vmax for t in self.tombs.get(key, ())):
                    for m in chain:
                        if vals[m] != nf:
                            raise Violation("durability",
                                            f"{self.kname(key)} decided v{vmax} -> {nf}, never "
                                            f"deleted, but {m} holds {nodes[m].store.get(key)}")

    def finish(self) -> None:
        """Heal and check the end oracles (raises ``Violation``)."""
        self.check_end(self.heal())

    # ------------------------------------------------------------------ state hash

    def state_key(self) -> int:
        c = self.cfg
        cap = max(c.retry, MAX_RTO, c.rto) + 0.001
        horizon = c.max_ticks * max(c.dts) if c.dts else 0.0
        if c.tombstone_ttl <= horizon + 1:
            cap = max(cap, c.tombstone_ttl + 0.001)
        now = self.now
        nodes = tuple((n, n in self.crashed, self.agent_epoch.get(n),
                       _ser_node(self.nodes[n], now, cap)) for n in sorted(self.nodes))
        return hash((
            nodes, frozenset(Counter(self.flight).items()), len(self.views),
            tuple(sorted((n, tuple(sorted(f))) for n, f in self.known_failed.items())),
            self.event_i, self.drops, self.dups, self.delays, self.ticks,
            tuple(self.lk_state), tuple(self.del_done),
            frozenset(self.outstanding.items()),
            frozenset((k, v) for k, v in self.sends.items() if v), frozenset(self.lost),
            frozenset(self.fwd_nf.items()), frozenset(self.fwd_ver.items()),
            frozenset(self.decided.items()), frozenset(self.committed.items()),
            frozenset((k, frozenset(v)) for k, v in self.tombs.items()),
            frozenset(self.ctombs.items()), frozenset(self.floor.items()),
            frozenset(self.cache_hit),
        ))

    # ------------------------------------------------------------------ printing

    def fmt_pkt(self, pkt: bytes) -> str:
        if not pkt:
            return "-"
        try:
            node, rest = pkt.split(b"|", 1)
            i = rest.rsplit(b"#", 1)[1].decode()
            return f"pkt({node.decode()}#{i})"
        except Exception:
            return f"pkt({pkt[:8]!r})"

    def fmt_body(self, b) -> str:
        if b is None:
            return "ack"
        t = type(b).__name__
        k = self.kname(b.key) if hasattr(b, "key") else ""
        if isinstance(b, Query):
            pkt = f" +{self.fmt_pkt(b.packet)}" if b.packet else ""
            return f"Query({k} {b.nf} seen={b.seen}{pkt})"
        if isinstance(b, InsertReq):
            return f"InsertReq({k} {b.nf} base={b.base})"
        if isinstance(b, Write):
            return (f"Write({k} v{b.ver} {b.nf or 'TOMBSTONE'}"
                    f"{' +' + self.fmt_pkt(b.packet) if b.packet else ''})")
        if isinstance(b, Ack):
            return f"Ack({k} v{b.ver} {b.nf or 'TOMBSTONE'})"
        if isinstance(b, Answer):
            return f"Answer({k} v{b.ver} {b.nf}{' released' if b.released else ''})"
        if isinstance(b, Gone):
            return f"Gone({k} v{b.ver})"
        if isinstance(b, DeleteReq):
            return f"DeleteReq({k} v{b.ver})"
        if isinstance(b, Sync):
            es = ", ".join(f"{self.kname(e.key)} v{e.ver} {e.nf or 'TOMBSTONE'}"
                           f"{'' if e.committed else ' uncommitted'}" for e in b.entries)
            return f"Sync[{es}]"
        if isinstance(b, SyncDone):
            return "SyncDone"
        return repr(b)

    def fmt_frame(self, f: Frame) -> str:
        return f"{self.fmt_body(f.body)} (e{f.epoch} seq{f.seq} ack{f.ack})"

    def fmt_choice(self, ch: Choice) -> str:
        kind = ch[0]
        if kind in ("deliver", "drop", "dup"):
            return f"{kind} {ch[1]}->{ch[2]} {self.fmt_frame(ch[3])}"
        if kind == "lookup":
            n, k, nf = self.cfg.lookups[ch[1]]
            return f"lookup {ch[1]}: {n} looks up k{k} proposing {nf}"
        if kind == "delete":
            n, k = self.cfg.deletes[ch[1]][:2]
            return f"delete {ch[1]}: {n} deletes k{k}"
        if kind == "event":
            return f"event: {' '.join(map(str, self.cfg.events[ch[1]]))}"
        if kind == "view":
            v, failed = self.views[ch[2] - 1]
            return (f"view e{ch[2]} (members {','.join(v.members)}"
                    f"{' failed ' + ','.join(sorted(failed)) if failed else ''}) reaches {ch[1]}")
        if kind == "tick":
            return f"tick +{ch[1]}s -> t={round(self.now + ch[1], 6)}"
        if kind == "tick1":
            return f"tick {ch[1]} at t={self.now}"
        if kind == "forget":
            return f"{ch[1]} forgets k{ch[2]}"
        return repr(ch)


# ----------------------------------------------------------------------------- state serialization

_SKIP = frozenset({"stats", "_out", "id", "rto", "retry", "tombstone_ttl", "max_delete_tries"})
_ATOMS = (int, str, bytes, bool, type(None))
_FROZEN = frozenset({Frame, Query, Answer, InsertReq, DeleteReq, Write, Ack, Gone, Sync, SyncDone,
                     SyncEntry})


def _ser(x, now: float, cap: float, dur: bool = False):
    t = type(x)
    if t is float:
        if dur:
            return x
        return min(round(now - x, 6), cap)
    if t in _ATOMS or t in _FROZEN:
        return x
    if t is View:
        return ("View", x.epoch, x.members, x.chain_len, x.steering)
    if t is dict:
        return tuple((k, _ser(v, now, cap)) for k, v in x.items())
    if t in (list, tuple) or t.__name__ == "deque":
        return tuple(_ser(v, now, cap) for v in x)
    if t in (set, frozenset):
        return frozenset(x)
    if dataclasses.is_dataclass(x):
        return (t.__name__,) + tuple(_ser(getattr(x, f.name), now, cap, f.name == "rto")
                                     for f in dataclasses.fields(x))
    return repr(x)


def _ser_node(node, now: float, cap: float):
    return tuple((k, _ser(v, now, cap)) for k, v in vars(node).items() if k not in _SKIP)


# ----------------------------------------------------------------------------- runs

@dataclass
class Found:
    """A violation with the trace that reaches it (``trace`` choices, then heal if ``end``)."""
    cfg: Config
    oracle: str
    msg: str
    trace: list
    end: bool
    engine: type = chain_mod.ChainNode
    how: str = ""
    seconds: float = 0.0
    minimized: list | None = None

    def compact(self) -> list[str]:
        return compact_trace(self.cfg, self.minimized if self.minimized is not None
                             else self.trace, self.engine)

    def text(self) -> str:
        tr = self.minimized if self.minimized is not None else self.trace
        return (f"{self.cfg.name}: [{self.oracle}] {self.msg}\n"
                + format_trace(self.cfg, tr, self.engine, end=self.end))


def compact(ch: Choice) -> str:
    """A choice as text that ``resolve`` reads back: frames are named by link and kind only
    (``deliver n1->n2 Write``: the oldest such frame in flight on that link)."""
    kind = ch[0]
    if kind in ("deliver", "drop", "dup"):
        body = ch[3].body
        return f"{kind} {ch[1]}->{ch[2]} {'ack' if body is None else type(body).__name__}"
    return " ".join(map(str, ch))


def compact_trace(cfg: Config, trace: list, engine=chain_mod.ChainNode) -> list[str]:
    """``compact`` texts of a trace's choices; a frame that is not the oldest of its kind on
    its link in flight gets its sequence number too (``deliver n3->n2 Query seq3``), and one
    that is not the oldest with that number either (a first frame of a link sent again,
    addressed, while the unaddressed copy is still in flight) the incarnation it is
    addressed to (``deliver n2->j1 SyncDone seq2 to2``)."""
    w = World(cfg, engine)
    out = []
    for ch in trace:
        if isinstance(ch, str):
            text, ch = ch, resolve(w, ch)
        else:
            text = compact(ch)
            if ch[0] in ("deliver", "drop", "dup"):
                kind = type(ch[3].body)
                same = [f for f in w.flight if f[:2] == ch[1:3] and type(f[2].body) is kind]
                if same[0] != ch[1:]:
                    text += f" seq{ch[3].seq}"
                    if next(f for f in same if f[2].seq == ch[3].seq) != ch[1:]:
                        text += f" to{ch[3].dst_inc}"
        out.append(text)
        try:
            w.step(ch)
        except Violation:
            break
    return out


def resolve(w: World, text: str) -> Choice | None:
    """The choice a ``compact`` text names in world ``w`` (None: not enabled there)."""
    parts = text.split()
    kind = parts[0]
    if kind in ("deliver", "drop", "dup"):
        src, dst = parts[1].split("->")
        want = parts[2]
        seq = to = None
        for part in parts[3:]:
            if part.startswith("seq"):
                seq = int(part[3:])
            elif part.startswith("to"):
                to = int(part[2:])
        for s, d, f in w.flight:
            name = "ack" if f.body is None else type(f.body).__name__
            if (s, d) == (src, dst) and name == want and seq in (None, f.seq) \
                    and to in (None, f.dst_inc):
                return (kind, s, d, f)
        return None
    if kind in ("lookup", "delete", "event"):
        return (kind, int(parts[1]))
    if kind == "view":
        return ("view", parts[1], int(parts[2]))
    if kind == "tick":
        return ("tick", float(parts[1]))
    if kind == "tick1":
        return ("tick1", parts[1])
    if kind == "forget":
        return ("forget", parts[1], int(parts[2]))
    raise ValueError(f"unknown choice {text!r}")


def run_trace(cfg: Config, trace: list, engine=chain_mod.ChainNode, *, end: bool = True,
              lenient: bool = False, log: bool = False):
    """Replay ``trace`` (choices, or their ``compact`` texts); returns (world, violation or
    None, the choices applied). ``lenient``: a choice not enabled is skipped."""
    w = World(cfg, engine, log=log)
    applied = []
    try:
        for ch in trace:
            if isinstance(ch, str):
                text, ch = ch, resolve(w, ch)
                if ch is None:
                    if lenient:
                        continue
                    raise ValueError(f"{text!r} is not enabled after {len(applied)} choices")
            if lenient and not w.enabled(ch):
                continue
            applied.append(ch)
            w.step(ch)
        if end:
            w.finish()
    except Violation as v:
        return w, v, applied
    return w, None, applied


def replay(cfg: Config, trace: list, engine=chain_mod.ChainNode, end: bool = True):
    """Replay a trace strictly; the violation it reaches, or None."""
    return run_trace(cfg, trace, engine, end=end)[1]


def format_trace(cfg: Config, trace: list, engine=chain_mod.ChainNode, *,
                 end: bool = True) -> str:
    w, v, _ = run_trace(cfg, trace, engine, end=end, log=True)
    lines = [f"  config {cfg.name}: members {','.join(cfg.members)} L={cfg.chain_len}, "
             f"lookups {cfg.lookups}, deletes {cfg.deletes}, events {cfg.events}"]
    step = 0
    for s in w.log:
        if s.startswith("    "):
            lines.append("      " + s.strip())
        else:
            step += 1 if s != "heal" else 0
            lines.append(f"  {step:3d}. {s}" if s != "heal" else "  heal (deliver all, "
                         "every view to every live member, timers until quiet)")
    lines.append(f"  => {v}" if v else "  => no violation")
    return "\n".join(lines)


def minimize(found: Found, budget: float = 30.0) -> list:
    """ddmin over the trace, then one-at-a-time removal; same oracle violated."""
    cfg, engine, oracle, end = found.cfg, found.engine, found.oracle, found.end
    deadline = time.monotonic() + budget

    def fails(tr):
        _, v, applied = run_trace(cfg, tr, engine, end=end, lenient=True)
        return (v is not None and v.oracle == oracle), applied

    ok, trace = fails(found.trace)
    if not ok:
        return found.trace
    n = 2
    while len(trace) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(trace) // n)
        reduced = False
        for i in range(0, len(trace), chunk):
            cand = trace[:i] + trace[i + chunk:]
            ok, applied = fails(cand)
            if ok:
                trace = applied
                n = max(n - 1, 2)
                reduced = True
                break
            if time.monotonic() > deadline:
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(trace), n * 2)
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for i in range(len(trace) - 1, -1, -1):
            cand = trace[:i] + trace[i + 1:]
            ok, applied = fails(cand)
            if ok:
                trace = applied
                changed = True
                break
    found.minimized = trace
    _, v, _ = run_trace(cfg, trace, engine, end=end)
    if v is not None:
        found.msg = v.msg
    return trace


@dataclass
class Stats:
    states: int = 0              # distinct states visited (summed over the deepening rounds)
    transitions: int = 0         # steps executed
    pruned: int = 0              # by state matching
    slept: int = 0               # transitions skipped by sleep sets
    heals: int = 0
    depth: int = 0               # the deepest round's bound
    complete_depth: int = 0      # every choice sequence up to this length was explored
    exhausted: bool = False      # ... and no state had choices left at the bound: all of it
    max_depth: int = 0
    seconds: float = 0.0
    runs: int = 0                # stress: runs
    ignored: int = 0             # violations of oracles the caller ignores

    def __str__(self):
        ign = f", {self.ignored} ignored" if self.ignored else ""
        if self.runs:
            return (f"{self.runs} runs, {self.transitions} steps, {self.heals} heals{ign}, "
                    f"{self.seconds:.1f}s")
        return (f"{self.states} states, {self.transitions} transitions, {self.pruned} pruned, "
                f"{self.slept} slept, {self.heals} heals{ign}; complete to depth "
                f"{self.complete_depth}{' (the whole space)' if self.exhausted else ''}"
                f", deepest round {self.depth}, {self.seconds:.1f}s")


_GLOBAL = ("tick", "tick1", "event", "lookup")


def _footprint(w: World, ch: Choice):
    """What a choice touches, for the independence relation of the sleep sets: None (all),
    or (nodes, links, budgets)."""
    kind = ch[0]
    if kind in _GLOBAL:
        return None
    if kind == "deliver":
        link = (ch[1], ch[2])
        inorder = next((f for f in w.flight if f[:2] == link), None) == ch[1:]
        return ({ch[2]}, {link}, set() if inorder else {"delay"})
    if kind == "drop":
        return (set(), {(ch[1], ch[2])}, {"drop"})
    if kind == "dup":
        return ({ch[2]}, {(ch[1], ch[2])}, {"dup"})
    if kind == "view":
        return ({ch[1]}, set(), set())
    if kind == "delete":
        return ({w.cfg.deletes[ch[1]][0]}, set(), set())
    if kind == "forget":
        return ({ch[1]}, set(), set())
    return None


def _independent(fa, fb) -> bool:
    if fa is None or fb is None:
        return False
    return not (fa[0] & fb[0] or fa[1] & fb[1] or fa[2] & fb[2])


def explore(cfg: Config, seconds: float = 5.0, depth: int = 40, *, engine=chain_mod.ChainNode,
            heal_at: str = "complete", stop_at_first: bool = True, start_depth: int = 8,
            depth_step: int = 4, minimize_budget: float = 20.0, sleep: bool = True,
            ignore=(), want: str | None = None) -> tuple[list[Found], Stats]:
    """Bounded exhaustive search over choice sequences: iterative deepening DFS (bounds
    ``start_depth``, + ``depth_step``, ... up to ``depth``) with sleep sets (independent
    steps, at different nodes, are not explored in both orders) and state matching (a state
    seen with at least as much depth left and a sleep set within the current one is pruned).
    Every new state (``heal_at="all"``) or every state whose lookups are all issued
    (``"complete"``) is healed on a copy and checked (once per state over all rounds).
    ``ignore``: oracles whose violations neither count nor stop (the branch is cut);
    ``want``: stop once that oracle is violated (with ``stop_at_first=False``)."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    stats = Stats()
    found: list[Found] = []
    seen_oracles: set = set()
    healed: set = set()
    root = World(cfg, engine)

    def record(v: Violation, trace, end):
        if v.oracle in ignore:
            stats.ignored += 1
            return
        if v.oracle in seen_oracles:
            return
        seen_oracles.add(v.oracle)
        found.append(Found(cfg, v.oracle, v.msg, list(trace), end, engine, "explore",
                           time.monotonic() - t0))

    def try_heal(w, trace, key):
        if key in healed:
            return
        healed.add(key)
        stats.heals += 1
        h = w.clone()
        try:
            h.finish()
        except Violation as v:
            record(v, trace, True)

    root_key = root.state_key()
    if heal_at != "leaf":
        try_heal(root, [], root_key)
    bound = min(start_depth, depth)
    timed_out = False
    while True:
        stats.depth = bound
        visited: dict[int, tuple[int, frozenset]] = {root_key: (bound, frozenset())}
        hit_bound = False
        # a frame: [world, trace, sleep set, choices to explore, choices done]
        root_choices = root.choices()
        stack = [[root, [], frozenset(), list(reversed(root_choices)), []]]
        while stack:
            if time.monotonic() > deadline:
                timed_out = True
                break
            if (found and stop_at_first) or (want and want in seen_oracles):
                break
            frame = stack[-1]
            w, trace, slp, todo, done = frame
            if not todo:
                stack.pop()
                continue
            ch = todo.pop()
            fch = _footprint(w, ch) if sleep else None
            child_sleep = frozenset()
            if sleep:
                child_sleep = frozenset(t for t in (slp | set(done))
                                        if _independent(_footprint(w, t), fch))
            done.append(ch)
            child = w.clone()
            stats.transitions += 1
            tr = trace + [ch]
            try:
                child.step(ch)
            except Violation as v:
                record(v, tr, False)
                continue
            left = bound - len(tr)
            key = child.state_key()
            enabled = child.choices()
            child_sleep = child_sleep & frozenset(enabled)
            prev = visited.get(key)
            if prev is not None and prev[0] >= left:
                if prev[1] <= child_sleep:
                    stats.pruned += 1
                    continue
                todo_child = [t for t in enabled if t in prev[1] and t not in child_sleep]
                visited[key] = (prev[0], prev[1] & child_sleep)
            else:
                if prev is None:
                    stats.states += 1
                visited[key] = (left, child_sleep)
                todo_child = [t for t in enabled if t not in child_sleep]
                stats.slept += len(enabled) - len(todo_child)
            stats.max_depth = max(stats.max_depth, len(tr))
            if heal_at == "all" or (heal_at == "complete"
                                    and all(s != "new" for s in child.lk_state)):
                try_heal(child, tr, key)
            if left > 0:
                stack.append([child, tr, child_sleep, list(reversed(todo_child)), []])
            else:
                if todo_child:
                    hit_bound = True
                if heal_at == "leaf":
                    try_heal(child, tr, key)
        if timed_out or (found and stop_at_first) or (want and want in seen_oracles):
            break
        stats.complete_depth = bound
        if not hit_bound:
            stats.exhausted = True
            break
        if bound >= depth:
            break
        bound = min(depth, bound + depth_step)
    stats.seconds = time.monotonic() - t0
    for f in found:
        minimize(f, minimize_budget)
    return found, stats


_WEIGHTS = {"deliver": 10.0, "drop": 0.6, "dup": 0.4, "tick": 1.2, "tick1": 0.6,
            "lookup": 2.0, "delete": 1.5, "event": 1.0, "view": 2.5, "forget": 0.3}


def stress(cfg: Config, seeds, *, seconds: float = 5.0, engine=chain_mod.ChainNode,
           stop_at_first: bool = True, minimize_budget: float = 20.0, ignore=(),
           ) -> tuple[list[Found], Stats]:
    """Random walks (``cfg.stress_depth`` steps, weighted choices), each healed and checked."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    stats = Stats()
    found: list[Found] = []
    seen_oracles: set = set()
    for seed in seeds:
        if time.monotonic() > deadline or (found and stop_at_first):
            break
        rng = random.Random(seed)
        w = World(cfg, engine)
        trace: list = []
        stats.runs += 1
        in_end = False
        try:
            for _ in range(cfg.stress_depth):
                chs = w.choices()
                if not chs:
                    break
                ws = [_WEIGHTS[c[0]] * (0.3 if c[0] == "deliver" and
                                        not _is_first(w, c) else 1.0) for c in chs]
                ch = rng.choices(chs, ws)[0]
                trace.append(ch)
                stats.transitions += 1
                w.step(ch)
            stats.heals += 1
            in_end = True
            w.finish()
        except Violation as v:
            end = in_end
            if v.oracle in ignore:
                stats.ignored += 1
            elif v.oracle not in seen_oracles:
                seen_oracles.add(v.oracle)
                found.append(Found(cfg, v.oracle, v.msg, trace, end, engine,
                                   f"stress seed {seed}", time.monotonic() - t0))
    stats.seconds = time.monotonic() - t0
    for f in found:
        minimize(f, minimize_budget)
    return found, stats


def _is_first(w: World, ch: Choice) -> bool:
    return next((f for f in w.flight if f[:2] == ch[1:3]), None) == ch[1:]


# ----------------------------------------------------------------------------- mutants

MUTANTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    # (a) the head overwrites instead of inserting if absent (first writer no longer wins)
    "a_head_overwrites": (
        "the head writes every InsertReq, even over a live entry",
        [(r"if not live and req\.base >= cur:", "if True:")]),
    # (b1) a tail answers queries before it is synced (before SyncDone from every member)
    "b1_tail_answers_unsynced": (
        "a tail serves queries before it is synced",
        [(r"(def _on_query\(.*?)if not self\.synced:\n(\s+)"
          r"self\._deferred\.append\(\(src, epoch, q\)\)\n\s+return",
          r"\1if False:\n\2pass")]),
    # (b2) a node is synced (acts as head and tail) without waiting for SyncDone
    "b2_synced_without_syncdone": (
        "a node counts itself synced without the members' SyncDone",
        [(r"(if any\(self\._done_from\.get\(m, 0\) < epoch[^\n]*:\n\s+)return", r"\1pass")]),
    # (c) a Gone does not drop cached answers
    "c_gone_keeps_cache": (
        "a Gone does not drop a cached answer",
        [(r"(hit = self\.cache\.get\(g\.key\)\n\s+if hit is not None and "
          r"hit\[0\] < g\.ver:\n\s+)del self\.cache\[g\.key\]",
          r"\1pass")]),
    # (d) lost frames are never retransmitted
    "d_no_retransmission": (
        "a link never retransmits",
        [(r"if now - entry\[1\] < link\.rto or sent == RETRANSMIT_BURST:", "if True:")]),
}


class MutationSiteMissing(LookupError):
    pass


def load_engine(source: str, modname: str):
    """Load engine source text as a module of its own (registered, so worlds pickle)."""
    mod = types.ModuleType(modname)
    mod.__file__ = f"<{modname}>"
    sys.modules[modname] = mod
    exec(compile(source, mod.__file__, "exec"), mod.__dict__)
    return mod


def mutant(name: str):
    """A scratch copy of the current agents/chain.py with mutation ``name``; its ChainNode."""
    _, edits = MUTANTS[name]
    with open(chain_mod.__file__, encoding="utf-8") as fh:
        src = fh.read()
    for pattern, repl in edits:
        src, n = re.subn(pattern, repl, src, count=1, flags=re.S)
        if n != 1:
            raise MutationSiteMissing(f"mutant {name}: pattern {pattern!r} not in agents/chain.py")
    return load_engine(src, f"chain_mutant_{name}").ChainNode


def engine_at(rev: str):
    """agents/chain.py as of git revision ``rev`` (a past engine), or None without git."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(chain_mod.__file__)))
    try:
        src = subprocess.run(["git", "show", f"{rev}:agents/chain.py"], cwd=root, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return load_engine(src, f"chain_at_{re.sub(r'[^0-9A-Za-z]', '_', rev)}").ChainNode


# ----------------------------------------------------------------------------- configurations

CONFIGS: dict[str, Config] = {c.name: c for c in [
    # two askers of one new key, L=2: the head asker writes, the other asks head and tail
    Config("two-askers-L2"),
    # L=3: the head asker and the tail as askers, then the middle
    Config("two-askers-L3", chain_len=3, keys=(((0, ("n1", "n2", "n3")),),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2"))),
    Config("middle-asker-L3", chain_len=3, keys=(((0, ("n1", "n2", "n3")),),),
           lookups=(("n2", 0, "nf1"), ("n3", 0, "nf2"))),
    # delete and re-insert, L=2, a cacher that is not in the chain asks again
    Config("delete-reinsert-L2", lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")),
           deletes=(("n1", 0),)),
    # the same, the delete only once both lookups are decided (no lookup races it)
    Config("delete-cached-L2", lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")),
           deletes=(("n1", 0, (0, 1)),)),
    Config("delete-relookup-L2", lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2"), ("n2", 0, "nf3")),
           deletes=(("n1", 0),)),
    # an NF fails while an insert of it is in flight, L=3 (the view reaches nodes at
    # different times; each purges when it gets it)
    Config("nf-fail-L3", chain_len=3, keys=(((0, ("n1", "n2", "n3")),),),
           lookups=(("n2", 0, "nf1"),), events=(("fail", "nf1"),)),
    Config("nf-fail-L2", lookups=(("n3", 0, "nf1"), ("n1", 0, "nf1")), events=(("fail", "nf1"),)),
    # the tail crashes and is removed, L=2, N=3
    Config("crash-tail-L2", lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")),
           events=(("crash", "n2"), ("remove", "n2"))),
    # the head crashes and is removed, L=2
    Config("crash-head-L2", lookups=(("n3", 0, "nf2"), ("n2", 0, "nf1")),
           events=(("crash", "n1"), ("remove", "n1"))),
    # a joiner becomes the head of a key the old chain holds, L=2
    Config("join-head-L2", keys=(((0, ("n1", "n2")), (1, ("j1",))),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")), events=(("join", "j1"),)),
    # a joiner becomes the tail, L=2
    Config("join-tail-L2", keys=(((0, ("n1", "n2")), (1, ("n1", "j1"))),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")), events=(("join", "j1"),)),
    # a joiner becomes the head, then an NF fails (the joiner may purge before it holds the
    # entries it heads), L=2
    Config("join-head-fail-L2", keys=(((0, ("n1", "n2")), (1, ("j1",))),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")),
           events=(("join", "j1"), ("fail", "nf1"))),
    # a live member is removed (it may never hear of it), N=4, L=2
    Config("remove-live-L2", members=("n1", "n2", "n3", "n4"),
           keys=(((0, ("n1", "n2")), (1, ("n1",))),),
           lookups=(("n1", 0, "nf1"), ("n4", 0, "nf2")), events=(("remove", "n2"),)),
    # tombstone TTL shorter than a tick: a delete, then a new lookup
    Config("tombstone-ttl-L3", chain_len=3, keys=(((0, ("n1", "n2", "n3")),),),
           lookups=(("n2", 0, "nf1"), ("n3", 0, "nf2")), deletes=(("n2", 0),),
           tombstone_ttl=0.5, max_ticks=2),
    # a removed node is named again under its own name, L=2
    Config("readmit-L2", lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")),
           events=(("remove", "n2"), ("readmit", "n2"))),
    # the tail's agent restarts under its name, no view change (faster than the heartbeat
    # timeout), L=2; then the head's
    Config("restart-tail-L2", lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2")),
           events=(("restart", "n2"),)),
    Config("restart-head-L2", lookups=(("n3", 0, "nf2"), ("n2", 0, "nf1")),
           events=(("restart", "n1"),)),
    # L=3, N=4: the middle restarts while the head's write is on its way through it
    Config("restart-middle-L3", members=("n1", "n2", "n3", "n4"), chain_len=3,
           keys=(((0, ("n2", "n1", "n3")),),), lookups=(("n2", 0, "nf1"), ("n4", 0, "nf2")),
           events=(("restart", "n1"),)),
    # the link layer itself: real retransmission timers, a loss and a duplicate
    Config("link-layer-L2", rto=0.2, dts=(0.2, 1.0), max_drops=1, max_dups=1, max_ticks=2),
]}

# budgets (drops, dups, delays, ticks) tried per configuration, cheapest first
BUDGETS = ((0, 0, 0, 1), (1, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 1), (0, 0, 0, 2), (1, 0, 0, 2),
           (1, 1, 1, 2), (2, 0, 0, 3))


def with_variant(cfg: Config, variant: str) -> Config:
    """``cfg`` under protocol ``variant`` (named ``name@variant`` unless the default)."""
    if variant not in chain_mod.VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(chain_mod.VARIANTS)}")
    if variant == cfg.variant:
        return cfg
    base = cfg.name.split("@", 1)[0]
    name = base if variant == chain_mod.VARIANTS[0] else f"{base}@{variant}"
    return dataclasses.replace(cfg, name=name, variant=variant)


def with_budget(cfg: Config, budget) -> Config:
    """``cfg`` with at least these (drops, dups, delays, ticks) budgets."""
    dr, du, de, ti = budget
    return dataclasses.replace(cfg, name=f"{cfg.name}{list(budget)}",
                               max_drops=max(dr, cfg.max_drops), max_dups=max(du, cfg.max_dups),
                               max_delays=max(de, cfg.max_delays),
                               max_ticks=max(ti, cfg.max_ticks))


# the randomized stress' families: bigger budgets, every kind of step
STRESS_CONFIGS: dict[str, Config] = {c.name: c for c in [
    Config("stress-L2-ttl", members=("n1", "n2", "n3"), chain_len=2,
           keys=(((0, ("n1", "n2")),),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2"), ("n3", 0, "nf3"), ("n2", 0, "nf3")),
           deletes=(("n1", 0),), max_drops=2, max_dups=2, max_ticks=10, split_ticks=True,
           tombstone_ttl=1.5, stress_depth=60),
    Config("stress-L2-mix", members=("n1", "n2", "n3", "n4"), chain_len=2,
           keys=(((0, ("n1", "n2")),), ((0, ("n3",)),)),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2"), ("n4", 1, "nf2"), ("n3", 1, "nf3"),
                    ("n2", 0, "nf3"), ("n4", 0, "nf1")),
           deletes=(("n1", 0), ("n3", 1)), events=(("crash", "n4"), ("remove", "n4"),
                                                  ("join", "j1"), ("fail", "nf1")),
           max_drops=4, max_dups=3, max_ticks=12, split_ticks=True, forget=True,
           stress_depth=90),
    Config("stress-L3-mix", members=("n1", "n2", "n3", "n4"), chain_len=3,
           keys=(((0, ("n1",)),), ((0, ("n2",)),)),
           lookups=(("n2", 0, "nf1"), ("n4", 0, "nf2"), ("n1", 1, "nf3"), ("n3", 1, "nf1"),
                    ("n3", 0, "nf3")),
           deletes=(("n2", 0), ("n1", 1)), events=(("fail", "nf1"), ("remove", "n3"),
                                                  ("readmit", "n3")),
           max_drops=4, max_dups=3, max_ticks=12, split_ticks=True, stress_depth=90),
    Config("stress-restart-L2", members=("n1", "n2", "n3"), chain_len=2,
           keys=(((0, ("n1", "n2")),),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2"), ("n2", 0, "nf3"), ("n3", 0, "nf1")),
           deletes=(("n1", 0),), events=(("restart", "n2"), ("remove", "n3"),
                                         ("readmit", "n3"), ("restart", "n1"),
                                         ("remove", "n2"), ("readmit", "n2")),
           max_drops=3, max_dups=2, max_ticks=12, split_ticks=True, stress_depth=100,
           stable_losses=True, forget=True),
    Config("stress-restart-L3", members=("n1", "n2", "n3", "n4"), chain_len=3,
           keys=(((0, ("n2",)),), ((0, ("n1",)),)),
           lookups=(("n2", 0, "nf1"), ("n4", 0, "nf2"), ("n1", 1, "nf3"), ("n3", 1, "nf1")),
           deletes=(("n2", 0),), events=(("restart", "n2"), ("restart", "n3"),
                                         ("fail", "nf1"), ("restart", "n1")),
           max_drops=2, max_dups=1, max_ticks=10, split_ticks=True, stress_depth=80,
           stable_losses=True),
    Config("stress-churn-L2", members=("n1", "n2", "n3"), chain_len=2,
           keys=(((0, ("n1", "n2")),),),
           lookups=(("n1", 0, "nf1"), ("n3", 0, "nf2"), ("n2", 0, "nf3"), ("n3", 0, "nf1")),
           deletes=(("n1", 0),), events=(("join", "j1"), ("remove", "n1"), ("join", "j2"),
                                         ("crash", "n2"), ("remove", "n2")),
           max_drops=3, max_dups=2, max_ticks=12, split_ticks=True, stress_depth=100,
           stable_losses=True),
]}


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="*", help="config names (default: all)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per config")
    ap.add_argument("--depth", type=int, default=30)
    ap.add_argument("--heal-at", default="complete", choices=["all", "complete", "leaf"])
    ap.add_argument("--stress", action="store_true", help="randomized stress instead")
    ap.add_argument("--seeds", type=int, default=10 ** 9)
    ap.add_argument("--engine", default="", help="a mutant name, or git:REV for a past engine")
    ap.add_argument("--variant", default=chain_mod.VARIANTS[0], choices=chain_mod.VARIANTS,
                    help="the protocol variant of every view")
    args = ap.parse_args(argv)
    engine = chain_mod.ChainNode
    if args.engine.startswith("git:"):
        engine = engine_at(args.engine[4:])
    elif args.engine:
        engine = mutant(args.engine)
    pool = STRESS_CONFIGS if args.stress else CONFIGS
    names = args.configs or list(pool)
    bad = 0
    for name in names:
        cfg = with_variant(pool.get(name) or CONFIGS.get(name) or STRESS_CONFIGS[name],
                           args.variant)
        if args.stress:
            found, stats = stress(cfg, range(args.seeds), seconds=args.seconds, engine=engine)
        else:
            found, stats = explore(cfg, args.seconds, args.depth, engine=engine,
                                   heal_at=args.heal_at)
        print(f"{cfg.name}: {stats}", flush=True)
        for f in found:
            bad += 1
            print(f"  found after {f.seconds:.1f}s ({f.how}), trace {len(f.trace)} -> "
                  f"{len(f.minimized or f.trace)} choices")
            print(f.text(), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
