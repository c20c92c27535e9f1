"""The chain-replicated connection table (sans-I/O protocol engine).

Each LB node runs one ``ChainNode``. Events go in (``lookup``, ``receive``, ``tick``,
``set_view``, ``delete``, ``forget``, ``purge_nf``), actions come out (``Send``, ``Decision``, ``Forward``); time is
passed in. No clock, no randomness, no sockets, no threads: the LB agent translates I/O.

Two variants (``View.variant``, ``VARIANTS``) place keys and start inserts differently; the
rest of the protocol (chain writes, commit and answer at the tail, tombstones, synchronization
on view changes, links) is the same code.

``patent`` is the protocol as the patent describes it. The LB nodes sit on a consistent-hash
ring (``RING_VNODES`` virtual nodes per member, by name); a key's tail is the member owning
the first ring point at or after the key's hash, its head the tail's L-1'th distinct
predecessor, the chain the nodes between them. The node a packet arrives at (any node, since
the gateway's steering knows nothing of the ring) sends ``Query`` with its proposed NF and
the first packet to the tail; the tail answers a committed entry, or starts the insert
itself through the head (``InsertReq``), which writes it down the chain; the tail commits,
answers the asker and forwards the packet. A new key costs L+1 hops before its first packet
leaves (L when the asker is the tail).

``steered`` (the default) is this testbed's optimization of it.
Placement: a key's chain is the L LB nodes that score highest for it under the gateway's
steering hash (``agents.steering``: rendezvous hashing over the gateway's ``bundle`` slots,
``View.steering``), highest first: the node the gateway steers a new connection to heads its
chain, and the next L-1 nodes it would pick follow. A slot keeps its index while its node is
away, so a member leaving or joining changes only the chains it is (or becomes) part of.
Without the slots, members score by their names (the same hash, seeded per name).

Lookup: a head asker writes its proposal if the key is absent (first writer wins) and its
``Write`` carries the connection's first packet down the chain; the tail commits it, answers
the head, then forwards the packet (``Forward``): a new key costs L-1 hops, and the packet
leaves before the head hears the answer (``Decision.released``). Any other asker sends
``Query`` to the tail, carrying the packet, and in parallel ``InsertReq`` with its proposal to
the head, which writes as above: L hops. Only the tail answers an asker (the node its packet
rode to knows whether it sent it); it answers a committed entry itself, and sends its own
``InsertReq`` only when the asker's could not be the one it needs (the asker had not heard
of a deletion the tail holds). Everything an asker learns about a key comes from the tail,
on one FIFO link: a head ignores an asker's stale insert request (a ``Gone`` from it could
overtake the tail's answer), and hands a tail asking with an older base its tombstone (the
tail may have expired its copy while the head's waited for its ack). Queries and answers
carry the asker's lookup number, so an answer to an earlier lookup of the key is not taken
for this one's (nor its ``released``). The tail's ``Ack`` goes back up with the committed
value. Deletes go through the head the same way and leave a versioned tombstone, so that a
stale insert cannot revive a deleted entry. The tail tells every node (``Gone``) to drop
cached answers of older versions when a deletion commits, when a re-insert commits
(version > 1: the tombstone before it may have been superseded before it committed, or its
``Gone`` lost with a tail that left), and when it becomes a key's tail holding a committed
deletion or re-insert (a Sync brought it, or it had it already: the old tail's ``Gone`` may
have left with it).
A key absent everywhere (new, or its tombstones expired) starts at a version above a floor
that grows with time (``_version_floor``: one window of 2**20 versions per
``tombstone_ttl``), so versions of a key never start again and a frame of its earlier life
arriving late is not taken for the new one (the nodes' ``now`` must be one clock: the
testbed's agents share the host's).

Links are reliable FIFO channels built here: per-link sequence numbers, cumulative acks
(carried by every frame; a link with nothing to send acks on the next ``tick``),
retransmission on ``tick`` (bounded bursts, doubling timeout while no ack progresses),
duplicate suppression and reordering buffers. A frame names the incarnations of both ends,
and a node takes only frames addressed to its own: the first frames of a link, sent before
the peer heard of this node (they might have been meant for an earlier life, which may have
taken them), are refused, and sent again, addressed, as soon as the peer hears from it.

A node's lives. A life is one incarnation of a name: ``incarnation`` (the agent passes its
start time) grows with every new one. Three ways to start one:

- a process restarted under its name within a view (faster than the controller's heartbeat
  timeout): its frames carry a higher incarnation; each peer resets its link, forgets what
  the old life asked (waiters, deferred work; a packet that rode to it is settled), and
  pushes it what it holds for chains the node is part of (committed entries, and uncommitted
  ones as their position needs: ``Sync`` from the nodes after it, ``Write`` again down the
  chain from the head and from its predecessor), then ``SyncDone``; the new life acts as
  head or tail only once it has every member's ``SyncDone``;
- a node admitted again under its name in a later view (``View.since``: the controller's
  admission epoch per member), whether or not it heard of its removal: it starts over (a
  higher incarnation; nothing stored, cached, owed or awaited; pending lookups asked anew,
  their packets with the agent) and its peers treat it as a new member (links reset, frames
  of the old life refused, entries pushed, the old life's waiters dropped);
- a node removed without being told keeps its stale view, but members that know drop its
  frames: it gets no answers and decides nothing new (only its cache), and the controller
  pushes the view again to an agent that heartbeats an old epoch.

Contracts (checked by tests/test_chain_unit.py's regressions and the explorer):

- a first packet is sent once: forwarded by the tail it rode to (the asker's decision then
  says ``released``) or by its asker, not both, while that tail stays a member and alive
  (an answer from another tail waits until the one it rode to has spoken: its answer, or
  its ``SyncDone`` of a later epoch, which follows anything it sent before); if the tail
  leaves or restarts before answering, or the asker's own life ends, the asker sends it:
  at least once then;
- a connection stays where its first packet went: until the tail its packet rode to has
  spoken (as above), an asker retrying its lookup (told of a deletion, or a view change)
  asks without inserting; once that tail's answer says it forwarded the packet (to an entry
  deleted since), the asker inserts that NF, not its own proposal. If another node's insert
  of another NF committed first (the deletion raced the connection's first packet), the
  decision names the table's NF, not ``released``: the agent sends the packet again, there
  (at least once then; the connection is not split);
- no committed entry names an NF that a view marked failed once every node has that view:
  ``purge_nf`` deletes what the node heads, the head refuses to insert a purged NF (the
  asker's agent proposes again through ``lookup``), and a tail deletes an insert of it that
  commits after its purge;
- caches are coherent with the table once the network is quiet: an answer of a version the
  node knows deleted (``Gone``) is neither decided nor cached;
- a key is never stuck behind a tombstone: committed tombstones expire after
  ``tombstone_ttl``; an uncommitted one is handed to a tail that asks with an older base;
- every lookup at a live member is answered once the network heals: a tail never starts an
  insert of an NF it knows failed (the asker's agent proposes anew), and work deferred for
  a peer that left or restarted is dropped.

Reconfiguration (a new ``View``): every node pushes (``Sync``) the entries it holds to
the members of each key's new chain that may lack them (uncommitted ones to all), re-sends
pending queries to the new tails and pending deletes to the new heads, then sends
``SyncDone`` to every member. A node acts as head or tail only once it has received
``SyncDone`` for its current epoch from every other member, so it holds every entry of
its chains before it answers for them; the new tail then commits what it holds.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Union

from agents.messages import (Ack, Answer, Body, DeleteReq, Frame, Gone, InsertReq, Query,
                             Sync, SyncDone, SyncEntry, Write)
from agents.steering import flow_hash, scores, seed
from agents.native import native as _native

__all__ = ["VARIANTS", "View", "Send", "Decision", "Forward", "Action", "ChainNode", "Frame"]

VARIANTS = ("steered", "patent")   # placements and insert paths (see above); first: default
RING_VNODES = 64     # patent: points per member on the ring (16 gave tails 0.4 - 1.5x their share)
SYNC_BATCH = 16      # entries per Sync frame (keeps frames well under 1500 bytes)
RETRANSMIT_BURST = 32  # frames resent per link per tick
MAX_RTO = 1.0        # seconds: cap of the per-link retransmission timeout backoff
MAX_RIDER = 255      # bytes: a first packet longer than this stays with the asker
VERSION_WINDOW_BITS = 20  # versions a key's life may use per tombstone_ttl (see _version_floor)


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class View:
    """A membership view: epoch, LB node ids, chain length, the gateway's ``bundle`` slots
    (``steering``: the member the gateway lists i-th at index i, '' for an empty slot; empty:
    not known), per member the epoch it was admitted in (``since``, in the order of
    ``members``; empty: not known), and the protocol variant (``VARIANTS``; ``patent``
    places keys on a ring of the members' names and ignores ``steering``). A member named
    again after a removal is admitted anew: a later ``since`` is a new life of that name."""
    epoch: int
    members: tuple[str, ...]
    chain_len: int
    steering: tuple[str, ...] = ()
    since: tuple[int, ...] = ()
    variant: str = VARIANTS[0]

    def __post_init__(self):
        for name in ("members", "steering", "since"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"duplicate members in view: {self.members}")
        if self.steering and sorted(m for m in self.steering if m) != sorted(self.members):
            raise ValueError(f"steering slots {self.steering} are not of the members "
                             f"{self.members}")
        if self.since and len(self.since) != len(self.members):
            raise ValueError(f"since {self.since} does not give one epoch per member "
                             f"{self.members}")
        if self.chain_len < 1:
            raise ValueError(f"chain_len must be >= 1, got {self.chain_len}")
        if self.epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {self.epoch}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")

    @property
    def steered(self) -> bool:
        """Chains follow the gateway's steering, and a head asker writes at once."""
        return self.variant == "steered"

    @cached_property
    def _ring(self) -> tuple[list[int], list[str]]:
        """patent: the ring's points (sorted) and the member owning each."""
        points = sorted((_h64(f"{m}#{i}".encode()), m)
                        for m in self.members for i in range(RING_VNODES))
        return [p for p, _ in points], [m for _, m in points]

    @cached_property
    def _seeds(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
        """Per member: its seed in the steering hash (from its slot, else from its name), its
        tie-break (among equal scores the lowest slot wins, as in OVS), and its name."""
        if self.steering:
            slots = [(seed(i), -i, m) for i, m in enumerate(self.steering) if m]
        else:
            slots = [(_h64(m.encode()) & 0xFFFFFFFF, -i, m)
                     for i, m in enumerate(sorted(self.members))]
        return tuple(zip(*slots)) if slots else ((), (), ())

    @cached_property
    def _memo(self) -> dict[bytes, tuple[str, ...]]:
        return {}

    def life(self, member: str) -> int:
        """The epoch ``member`` was admitted in (0: not known, or not a member)."""
        if not self.since or member not in self.members:
            return 0
        return self.since[self.members.index(member)]

    def renewed(self, older: "View") -> set[str]:
        """Members of this view that are a new life since ``older``: absent from it, or
        admitted again (a later ``since``)."""
        return {m for m in self.members
                if m not in older.members or self.life(m) != older.life(m)}

    def chain(self, key: bytes) -> tuple[str, ...]:
        """The key's chain, head first, tail last (``min(chain_len, members)`` nodes)."""
        memo = self._memo
        c = memo.get(key)
        if c is not None:
            return c
        if not self.steered:
            c = self._ring_chain(key)
        else:
            c = self._steered_chain(key)
        if len(memo) >= 200_000:
            memo.clear()
        memo[key] = c
        return c

    def _ring_chain(self, key: bytes) -> tuple[str, ...]:
        """patent: the tail owns the first ring point at or after the key's hash; the chain
        runs from its L-1'th distinct predecessor (the head) to it."""
        points, owners = self._ring
        if not points:
            return ()
        i = bisect_left(points, _h64(key)) % len(points)
        want = min(self.chain_len, len(self.members))
        picked: list[str] = []
        for j in range(len(points)):
            m = owners[(i - j) % len(points)]
            if m not in picked:
                picked.append(m)
                if len(picked) == want:
                    break
        return tuple(reversed(picked))

    def _steered_chain(self, key: bytes) -> tuple[str, ...]:
        seeds, ties, names = self._seeds
        if _native is not None:                # the same ranking, compiled (agents.native)
            c = _native.steered_chain(key, seeds, ties, names, self.chain_len)
            if c is not None:
                return c
        return self._steered_chain_py(key)

    def _steered_chain_py(self, key: bytes) -> tuple[str, ...]:
        seeds, ties, names = self._seeds
        fh = flow_hash(key)
        if fh is None:                         # a key the gateway does not hash (not IPv4)
            fh = _h64(key) & 0xFFFFFFFF
        ranked = sorted(zip(scores(fh, seeds), ties, names), reverse=True)
        return tuple(m for _, _, m in ranked[:self.chain_len])


@dataclass(frozen=True)
class Send:
    """Send ``msg`` (a ``Frame``) to node ``dst``."""
    dst: str
    msg: Frame


@dataclass(frozen=True)
class Decision:
    """Packets of ``key`` go to NF ``nf``; ``released``: the first packet is already sent."""
    key: bytes
    nf: str
    released: bool = False


@dataclass(frozen=True)
class Forward:
    """Tail: send ``packet``, the first packet of an asker's connection ``key``, to ``nf``."""
    key: bytes
    nf: str
    packet: bytes


Action = Union[Send, Decision, Forward]


@dataclass(slots=True)
class _Rec:
    ver: int        # version of the key's latest write held here
    nf: str         # '' for a tombstone
    cver: int = 0   # highest version known committed at the tail
    t: float = 0.0  # when ``ver`` was applied here

    @property
    def committed(self) -> bool:
        return self.cver >= self.ver


@dataclass
class _Link:
    rto: float
    peer_inc: int = 0
    next_seq: int = 1
    expected: int = 1
    unacked: dict[int, list] = field(default_factory=dict)   # seq -> [Frame, last sent]
    ooo: dict[int, Frame] = field(default_factory=dict)
    ack_due: bool = False


@dataclass
class _Pending:
    nf: str
    sent: float
    packet: bytes = b""     # rides with the first query, then stays with the asker
    released: bool = False  # a tail sent the packet (its answer was of a deleted version)
    lookup: int = 0         # this lookup's number (``Query.lookup``)
    rode: str = ""          # the tail the packet rode to ('' if it stayed here)
    rode_epoch: int = 0     # ... in the view of this epoch
    held: Answer | None = None  # an answer from another tail, decided once ``rode`` settles
    heard: bool = False     # ``rode`` answered this lookup
    went: str = ""          # the NF ``rode`` forwarded the packet to (its released answer)


@dataclass
class _Insert:
    nf: str
    base: int
    sent: float


@dataclass
class _Delete:
    ver: int
    sent: float
    tries: int = 0


class _WatchedCache(dict):
    """A dict that adds to ``changes`` every key it sets or drops (reads are dict's own)."""
    __slots__ = ("changes",)

    def __init__(self, changes: set):
        super().__init__()
        self.changes = changes

    def __setitem__(self, key, value):
        self.changes.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.changes.add(key)
        super().__delitem__(key)

    def pop(self, key, *default):
        self.changes.add(key)
        return super().pop(key, *default)

    def clear(self):
        self.changes.update(self)
        super().clear()

    def _unwatched(self, *_, **__):
        raise NotImplementedError("ChainNode.cache: use [], del, pop or clear (they are watched)")

    setdefault = update = popitem = __ior__ = _unwatched


class ChainNode:
    """One LB node's share of the distributed connection table."""

    def __init__(self, node_id: str, view: View, *, rto: float = 0.2, retry: float = 1.0,
                 tombstone_ttl: float = 60.0, max_delete_tries: int = 10,
                 incarnation: int = 0, cache_changes: set | None = None):
        self.id = node_id
        self.view = view
        # incarnation: higher for every new life of this name (a process restarted under it
        # passes a larger one, e.g. its start time; a re-admission adds one), so that peers
        # reset their links to it and push it its entries again
        self.inc = max(incarnation, view.epoch, 1)
        self.rto = rto
        self.retry = retry
        self.tombstone_ttl = tombstone_ttl
        self.max_delete_tries = max_delete_tries
        self.store: dict[bytes, _Rec] = {}
        self.live = 0                                       # records naming an NF (not tombstones)
        # answers: key -> (ver, nf); ``cache_changes``, if given, collects the keys whose
        # answer changed or left (the agent's fast path follows them, agents.datapath)
        self.cache: dict[bytes, tuple[int, str]] = (
            {} if cache_changes is None else _WatchedCache(cache_changes))
        self.synced = False
        self.stats = {"frames_out": 0, "retransmits": 0, "frames_in": 0, "dropped_in": 0,
                      "decisions": 0, "inserts": 0, "deletes": 0, "released": 0}
        self._pending: dict[bytes, _Pending] = {}          # lookups awaiting an answer
        self._waiters: dict[bytes, dict[str, tuple[bytes, int]]] = {}  # tail: key -> asker ->
        #                                                   (packet, lookup)
        self._lookups = 0                                  # lookups started here
        self._inserting: dict[bytes, _Insert] = {}         # tail: outstanding InsertReq
        self._deleting: dict[bytes, _Delete] = {}          # outstanding DeleteReq
        self._done_from: dict[str, int] = {}               # peer -> highest SyncDone epoch
        self._deferred: list[tuple[str, int, Body]] = []   # head/tail work awaiting sync
        self._links: dict[str, _Link] = {}
        self._retired: dict[str, int] = {}                # peer -> incarnation that left
        self._local: deque[tuple[str, int, Body]] = deque()
        self._tombstones: deque[tuple[float, bytes, int]] = deque()
        self._gone: dict[bytes, int] = {}                 # key -> newest Gone version heard
        self._gone_order: deque[tuple[float, bytes, int]] = deque()
        self._out: list[Action] = []
        self._started = False
        self._before: View | None = None                  # the view before this one
        self.failed: set[str] = set()                     # NFs purged: never inserted again

    @property
    def removed(self) -> bool:
        """Not a member of its current view (removed, or not yet admitted)."""
        return self.id not in self.view.members

    # ----------------------------------------------------------------- public API

    def lookup(self, key: bytes, proposed_nf: str, now: float,
               packet: bytes = b"") -> list[Action]:
        """A packet of ``key`` arrived here; eventually yields ``Decision(key, nf)``.

        ``packet`` (the IPv4 packet, optional) may ride to the tail with the head's write
        or the query, and the tail forwards it on commit; the decision then says ``released``.
        An empty ``proposed_nf`` asks without inserting (a packet related to a connection,
        such as an ICMP error, must not create one): ``Decision(key, '')`` if there is none.
        """
        self._start(now)
        hit = self.cache.get(key)
        if hit is not None:
            return [Decision(key, hit[1])]
        p = self._pending.get(key)
        if p is not None and proposed_nf and (not p.nf or p.nf in self.failed) \
                and proposed_nf not in self.failed:
            # a query-only lookup becomes an insert, or its NF failed meanwhile: propose anew
            p.nf = proposed_nf
            if not self.removed:
                self._query(key, now)
        if p is None and not self.removed:
            rider = packet if len(packet) <= MAX_RIDER else b""
            self._lookups += 1
            self._pending[key] = _Pending(proposed_nf, now, rider, lookup=self._lookups)
            self._query(key, now)
        return self._finish(now)

    def receive(self, src: str, msg, now: float) -> list[Action]:
        """A frame from node ``src`` arrived."""
        self._start(now)
        if not isinstance(msg, Frame):
            return self._finish(now)
        self.stats["frames_in"] += 1
        if (src not in self.view.members or msg.epoch > self.view.epoch or src == self.id
                or self.removed):
            # unknown sender, or a view we do not have yet: the sender retransmits
            self.stats["dropped_in"] += 1
            return self._finish(now)
        if msg.src_inc <= self._retired.get(src, 0):
            return self._finish(now)                      # a life that left the view
        link = self._link(src)
        if msg.src_inc < link.peer_inc:
            return self._finish(now)                      # from a previous incarnation
        if msg.src_inc > link.peer_inc:
            if link.peer_inc:
                # the peer restarted under its name: a new life that holds nothing
                link = self._links[src] = _Link(self.rto)
                link.peer_inc = msg.src_inc
                self._peer_renewed(src, now)
            else:
                # first word from this life of the peer: what was sent before it, addressed
                # to no incarnation in particular, it refused; send it again, addressed
                link.peer_inc = msg.src_inc
                self._resend(src, link)
        if msg.dst_inc != self.inc:
            # addressed to an earlier life of this node, or to none (sent before the peer
            # heard of this one: it may have been meant for an earlier life, which may have
            # taken it already): refused; the ack tells the peer who this node is now
            link.ack_due = True
            return self._finish(now)
        unacked = link.unacked
        while unacked:
            first = next(iter(unacked))
            if first > msg.ack:
                break
            del unacked[first]
            link.rto = self.rto                             # the peer keeps up again
        if msg.seq:
            link.ack_due = True
            if msg.seq == link.expected:
                link.expected += 1          # first, so replies on this link carry the ack
                self._deliver(src, msg, now)
                while link.expected in link.ooo:
                    frame = link.ooo.pop(link.expected)
                    link.expected += 1
                    self._deliver(src, frame, now)
            elif msg.seq > link.expected:
                link.ooo.setdefault(msg.seq, msg)
        return self._finish(now)

    def tick(self, now: float) -> list[Action]:
        """Timers: delayed acks, retransmissions, retries, tombstone expiry."""
        self._start(now)
        self._expire(now)
        if self.removed:
            return self._finish(now)       # out of the view: links restart if it is named again
        for peer, link in self._links.items():
            # oldest first, a bounded burst, and the timeout doubles until acks progress:
            # an overloaded peer is not buried under copies of what it already buffers
            sent = 0
            for entry in link.unacked.values():
                if now - entry[1] < link.rto or sent == RETRANSMIT_BURST:
                    break
                entry[0] = replace(entry[0], dst_inc=link.peer_inc, ack=link.expected - 1)
                entry[1] = now
                link.ack_due = False
                sent += 1
                self._emit(peer, entry[0])
            if sent:
                self.stats["retransmits"] += sent
                link.rto = min(link.rto * 2, MAX_RTO)
        self._flush_acks()                 # after the retransmissions, which carry acks too
        # retries are a safety net for requests a peer dropped (it was not head or tail in
        # its view): while the link to it still holds unacked frames, the request is on its way
        chain = self.view.chain
        for key, p in self._pending.items():
            if now - p.sent >= self.retry and not self._backlogged(chain(key)[-1]):
                self._query(key, now)
        if self.synced:
            for key in [k for k, i in self._inserting.items()
                        if now - i.sent >= self.retry and not self._backlogged(chain(k)[0])]:
                self._serve(key, now, force=True)
        for key, d in list(self._deleting.items()):
            if now - d.sent >= self.retry and not self._backlogged(chain(key)[0]):
                if d.tries >= self.max_delete_tries:
                    del self._deleting[key]
                else:
                    d.tries += 1
                    d.sent = now
                    self._send(self.view.chain(key)[0], DeleteReq(key, d.ver), now)
        return self._finish(now)

    def _expire(self, now: float) -> None:
        """Forget deletions heard and drop committed tombstones after ``tombstone_ttl``."""
        while self._gone_order and now - self._gone_order[0][0] >= self.tombstone_ttl:
            _, key, ver = self._gone_order.popleft()
            if self._gone.get(key) == ver:        # a newer deletion of the key stays known
                del self._gone[key]
        while self._tombstones and now - self._tombstones[0][0] >= self.tombstone_ttl:
            _, key, ver = self._tombstones.popleft()
            rec = self.store.get(key)
            if rec is not None and rec.ver == ver and not rec.nf and rec.committed:
                del self.store[key]

    def set_view(self, view: View, now: float) -> list[Action]:
        """Adopt a newer membership view and run the synchronization protocol."""
        self._start(now)
        if view.epoch <= self.view.epoch:
            return self._finish(now)
        old, self.view = self.view, view
        self._before = old                    # whose tails announced what (_check_synced)
        self.synced = False
        renewed = view.renewed(old)
        # work deferred for peers that left: nobody waits for it
        self._deferred = [d for d in self._deferred if d[0] in view.members]
        for peer in [p for p in self._links if p not in view.members or p in renewed]:
            # frames of that life arriving later are refused (see ``receive``)
            self._retired[peer] = max(self._retired.get(peer, 0), self._links.pop(peer).peer_inc)
            self._done_from.pop(peer, None)
        if self.id not in view.members:
            self._pending.clear()
            return self._finish(now)
        if self.id in renewed:
            # admitted again (whether or not this node heard of its removal): a new life,
            # which keeps nothing of the old one
            self._restart()
            old = View(0, (), 1)
        for peer in renewed - {self.id}:
            self._forget_life(peer, now, requery=False)
        self._release_held(now, requery=False)  # a packet's tail that left has settled
        #                                         (every pending lookup asks again below)
        batches: dict[str, list[SyncEntry]] = {}
        for key, rec in list(self.store.items()):
            new_chain = view.chain(key)
            old_chain = old.chain(key) if old.members else ()
            staying = self.id in new_chain
            entry = SyncEntry(key, rec.ver, rec.nf, rec.committed)
            for m in new_chain:
                if m != self.id and (not rec.committed or not staying or m not in old_chain
                                     or m in renewed):
                    batches.setdefault(m, []).append(entry)
        self._push(batches, now)
        for key in self._pending:
            self._query(key, now)
        for key, waiting in list(self._waiters.items()):
            for asker in [a for a in waiting if a not in view.members]:
                del waiting[asker]            # it left: nobody waits for its answer
            if not waiting:
                del self._waiters[key]
                self._inserting.pop(key, None)
        for key in [k for k in self._waiters if view.chain(k)[-1] != self.id]:
            del self._waiters[key]
            self._inserting.pop(key, None)
        for key, d in self._deleting.items():
            d.sent = now
            self._send(view.chain(key)[0], DeleteReq(key, d.ver), now)
        for m in view.members:
            if m != self.id:
                self._send(m, SyncDone(), now)
        self._check_synced(now)
        return self._finish(now)

    def _push(self, batches: dict[str, list[SyncEntry]], now: float) -> None:
        for dst, entries in batches.items():
            for i in range(0, len(entries), SYNC_BATCH):
                self._send(dst, Sync(tuple(entries[i:i + SYNC_BATCH])), now)

    def _restart(self) -> None:
        """Start a new life under this name: a higher incarnation (peers reset their links),
        nothing stored, cached, owed or awaited. Pending lookups stay, asked anew once synced;
        their packets stay with the agent (a tail of the old life may have sent one: at
        least once then, as when a tail leaves)."""
        self.inc += 1
        self.store.clear()
        self.live = 0
        self.cache.clear()
        for p in self._pending.values():
            p.packet, p.rode, p.held, p.released = b"", "", None, False
        for d in (self._waiters, self._inserting, self._deleting, self._done_from,
                  self._links, self._gone):
            d.clear()
        self._deferred.clear()
        self._tombstones.clear()
        self._gone_order.clear()

    def _forget_life(self, peer: str, now: float, requery: bool = True) -> None:
        """``peer``'s old life is gone: its new life does not wait for the answers its old one
        asked for, and nothing more comes from the old one for a packet that rode to it (if
        it sent it, its answer is lost: at least once then, as when a tail leaves)."""
        self._deferred = [d for d in self._deferred if d[0] != peer]
        for key in [k for k, w in self._waiters.items() if peer in w]:
            del self._waiters[key][peer]
            if not self._waiters[key]:
                del self._waiters[key]
                self._inserting.pop(key, None)
        for key, p in list(self._pending.items()):
            if p.rode == peer:
                waited, p.rode = not p.heard, ""
                if p.held is not None:
                    held, p.held = p.held, None
                    self._on_answer(peer, held, now)
                elif waited and requery:
                    self._query(key, now)       # it waited for that tail to insert again

    def _peer_renewed(self, peer: str, now: float) -> None:
        """``peer`` restarted under its name within this view: it holds nothing, so push it
        every entry of the chains it is part of, and send it again what it lost with its old
        life (queries, insert and delete requests), then SyncDone for this epoch."""
        self._forget_life(peer, now)
        if self.removed:
            return
        chain = self.view.chain
        entries = []
        for k, r in self.store.items():
            c = chain(k)
            if peer not in c:
                continue
            i = c.index(self.id) if self.id in c else -1
            if r.committed or c.index(peer) < i:
                # (an uncommitted write to a node before this one: it had it, no order lost)
                entries.append(SyncEntry(k, r.ver, r.nf, r.committed))
            elif i == 0 or (i > 0 and c.index(peer) == i + 1):
                # a write on its way down the chain: sent down again, in order, by the head
                # (each hop passes on a write it holds uncommitted) and by the peer's
                # predecessor (which may have passed it to the peer's old life)
                self._send(c[i + 1], Write(k, r.ver, r.nf), now)
        self._push({peer: entries} if entries else {}, now)
        for key, p in self._pending.items():
            if peer in chain(key):
                self._query(key, now)
        if self.synced:
            for key in [k for k in self._inserting if chain(k)[0] == peer]:
                self._serve(key, now, force=True)
        for key, d in self._deleting.items():
            if chain(key)[0] == peer:
                d.sent = now
                self._send(peer, DeleteReq(key, d.ver), now)
        self._send(peer, SyncDone(), now)

    def delete(self, key: bytes, now: float) -> list[Action]:
        """The connection of ``key`` ended: delete its entry through the head."""
        self._start(now)
        hit = self.cache.pop(key, None)
        if not self.removed:
            self._request_delete(key, hit[0] if hit else 0, now)
        return self._finish(now)

    def forget(self, key: bytes) -> None:
        """Drop this node's cached answer for ``key``; the entry stays in the table (this
        node saw only packets related to the connection and cannot know that it ended)."""
        self.cache.pop(key, None)

    def purge_nf(self, nf: str, now: float) -> list[Action]:
        """``nf`` failed: delete every entry naming it among the keys this node heads, and
        never insert it again (a pending lookup proposing it is proposed anew by ``lookup``;
        a tail deletes an insert of it that commits after this)."""
        self._start(now)
        self.failed.add(nf)
        for ins in self._inserting.values():
            if ins.nf == nf:
                ins.base = -1                 # resent with a waiter's new proposal, see _on_query
        if not self.removed:
            for key in [k for k, r in self.store.items()
                        if r.nf == nf and self.view.chain(k)[0] == self.id]:
                self.cache.pop(key, None)
                self._request_delete(key, self.store[key].ver, now)
        return self._finish(now)

    def replica(self) -> dict[bytes, str]:
        """The committed live entries this node stores."""
        chain = self.view.chain
        return {k: r.nf for k, r in self.store.items()
                if r.nf and r.committed and self.id in chain(k)}

    def uncommitted(self) -> dict[bytes, int]:
        """The chain-replication "sent" list: writes passed on but not yet acked by the tail."""
        return {k: r.ver for k, r in self.store.items() if not r.committed}

    def version(self, key: bytes) -> int:
        """The version of ``key`` this node holds (0 if none): its history for that key."""
        rec = self.store.get(key)
        return rec.ver if rec else 0

    def role(self, key: bytes) -> str:
        """This node's part in the key's chain: head, middle, tail, or handoff (not in it)."""
        c = self.view.chain(key)
        if c[-1] == self.id:
            return "tail"
        if c[0] == self.id:
            return "head"
        return "middle" if self.id in c else "handoff"

    def roles(self) -> dict[str, int]:
        """How many stored keys this node heads, holds in the middle, tails, or hands off."""
        out = {"head": 0, "middle": 0, "tail": 0, "handoff": 0}
        for key in self.store:
            out[self.role(key)] += 1
        return out

    # ----------------------------------------------------------------- links

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        if not self.removed:
            for m in self.view.members:
                if m != self.id:
                    self._send(m, SyncDone(), now)
            self._check_synced(now)

    def _send(self, dst: str, body: Body, now: float) -> None:
        if dst == self.id:
            self._local.append((self.id, self.view.epoch, body))
            return
        if dst not in self.view.members:
            return
        link = self._link(dst)
        frame = Frame(self.id, self.inc, link.peer_inc, self.view.epoch, link.next_seq,
                      link.expected - 1, body)
        link.unacked[link.next_seq] = [frame, now]
        link.next_seq += 1
        link.ack_due = False
        self._emit(dst, frame)

    def _link(self, peer: str) -> _Link:
        """The link with ``peer``, made on first use (not built per frame to be dropped)."""
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(self.rto)
        return link

    def _resend(self, dst: str, link: _Link) -> None:
        """Send the link's unacked frames again now, addressed to the peer's incarnation."""
        for entry in link.unacked.values():
            entry[0] = replace(entry[0], dst_inc=link.peer_inc, ack=link.expected - 1)
            self.stats["retransmits"] += 1
            self._emit(dst, entry[0])

    def _backlogged(self, dst: str) -> bool:
        link = self._links.get(dst)
        return link is not None and bool(link.unacked)

    def _emit(self, dst: str, frame: Frame) -> None:
        self.stats["frames_out"] += 1
        self._out.append(Send(dst, frame))

    def _deliver(self, src: str, frame: Frame, now: float) -> None:
        self._handle(src, frame.epoch, frame.body, now)
        self._drain(now)

    def _drain(self, now: float) -> None:
        while self._local:
            src, epoch, body = self._local.popleft()
            self._handle(src, epoch, body, now)

    def _finish(self, now: float) -> list[Action]:
        self._drain(now)
        out, self._out = self._out, []
        return out

    def _flush_acks(self) -> None:
        """Pure acks for links whose received frames no reply has acknowledged yet."""
        for peer, link in self._links.items():
            if link.ack_due:
                link.ack_due = False
                self._emit(peer, Frame(self.id, self.inc, link.peer_inc, self.view.epoch, 0,
                                       link.expected - 1, None))

    # ----------------------------------------------------------------- protocol

    def _handle(self, src: str, epoch: int, body: Body, now: float) -> None:
        current = epoch >= self.view.epoch
        if isinstance(body, Query):
            self._on_query(src, epoch, body, now)
        elif isinstance(body, Answer):
            self._on_answer(src, body, now)
        elif isinstance(body, Write):
            if current:
                self._on_write(body, now)
            elif self.id in self.view.chain(body.key):
                self._apply(body.key, body.ver, body.nf, now)   # data only; owner re-syncs
        elif isinstance(body, Ack):
            self._on_ack(body, now)
        elif isinstance(body, (InsertReq, DeleteReq)):
            if current:                  # older requests are re-sent by their sender
                self._on_head_request(src, epoch, body, now)
        elif isinstance(body, Gone):
            self._on_gone(body, now)
        elif isinstance(body, Sync):
            for e in body.entries:
                chain = self.view.chain(e.key)
                if self.id in chain:
                    rec = self._apply(e.key, e.ver, e.nf, now)
                    if e.committed and rec.ver == e.ver:
                        if rec.cver < e.ver and chain[-1] == self.id and (not e.nf
                                                                          or e.ver > 1):
                            # a deletion (or a re-insert) new to its new tail: the old
                            # tail's Gone may have left with it
                            self._announce_gone(e.key, e.ver, now)
                        self._committed_up_to(e.key, rec, e.ver, e.nf, now)
                    elif not e.committed and rec.cver >= e.ver:
                        self._send(src, Ack(e.key, e.ver, e.nf), now)   # the pusher missed it
        elif isinstance(body, SyncDone):
            if epoch > self._done_from.get(src, 0):
                self._done_from[src] = epoch
                self._release_held(now)
            self._check_synced(now)

    def _check_synced(self, now: float) -> None:
        if self.synced or self.removed:
            return
        epoch = self.view.epoch
        if any(self._done_from.get(m, 0) < epoch for m in self.view.members if m != self.id):
            return
        self.synced = True
        for key, rec in list(self.store.items()):
            chain = self.view.chain(key)
            if self.id not in chain:
                del self.store[key]          # handed off to its chain when the view came
                self.live -= bool(rec.nf)
                continue
            if not rec.committed and chain[-1] == self.id:
                self._commit(key, now)
            elif (rec.committed and chain[-1] == self.id and (not rec.nf or rec.ver > 1)
                  and self._before is not None and self._before.members
                  and self._before.chain(key)[-1] != self.id):
                # a new tail that already held a committed deletion (or re-insert): the old
                # tail's Gone may have left with it, and a node still caches what it deleted
                self._announce_gone(key, rec.ver, now)
            if rec.nf in self.failed and chain[0] == self.id and key not in self._deleting:
                # a failed NF's entry that reached this head after its purge (a Sync of the
                # view that made it head): deleted now (see ``purge_nf``)
                self.cache.pop(key, None)
                self._request_delete(key, rec.ver, now)
        for key in list(self._waiters):
            self._serve(key, now, force=True)
        deferred, self._deferred = self._deferred, []
        for src, ep, body in deferred:
            self._handle(src, ep, body, now)

    def _apply(self, key: bytes, ver: int, nf: str, now: float) -> _Rec:
        rec = self.store.get(key)
        if rec is None:
            rec = self.store[key] = _Rec(ver, nf, 0, now)
            self.live += bool(nf)
        elif ver > rec.ver:
            self.live += bool(nf) - bool(rec.nf)
            rec.ver, rec.nf, rec.t = ver, nf, now
        else:
            return rec
        if not nf:
            self._tombstones.append((now, key, ver))
        return rec

    def _on_query(self, src: str, epoch: int, q: Query, now: float) -> None:
        if self.view.chain(q.key)[-1] != self.id:
            return                                    # not the tail here: the asker retries
        if not self.synced:
            self._deferred.append((src, epoch, q))
            return
        rec = self.store.get(q.key)
        if rec is not None and rec.nf and rec.nf not in self.failed:
            if not rec.committed:
                self._commit(q.key, now)
            self._send(src, Answer(q.key, rec.ver, rec.nf, lookup=q.lookup), now)
            return
        if rec is not None and rec.ver and q.seen < rec.ver:
            # the asker has not heard of this deletion: a stale query must not revive the
            # entry; tell it, and a still-pending asker asks again right away
            self._send(src, Gone(q.key, rec.ver), now)
            return
        if not q.nf:              # asked only: there is no entry (a purged NF's is none)
            w = self._waiters.get(q.key, {}).get(src)
            if w is not None and w[0] and w[1] == q.lookup:
                # the asker's packet rode to this tail with this lookup's earlier query, and
                # waits here: "no entry" would tell it this tail spoke while it may still
                # forward the packet. An insert of a live NF under way answers it (and sends
                # the packet) on commit; otherwise the packet stays the asker's
                ins = self._inserting.get(q.key)
                if ins is not None and ins.nf not in self.failed:
                    return
                self._waiters[q.key][src] = (b"", q.lookup)
            ver = rec.ver if rec is not None and not rec.nf else 0
            self._send(src, Answer(q.key, ver, "", lookup=q.lookup), now)
            return
        waiting = self._waiters.setdefault(q.key, {})
        if q.packet or waiting.get(src, (b"", -1))[1] != q.lookup:
            waiting[src] = (q.packet, q.lookup)     # a retry does not drop the packet
        ins = self._inserting.get(q.key)
        if ins is not None and ins.nf in self.failed and q.nf not in self.failed:
            ins.nf = q.nf                           # a retry's new proposal replaces a dead one
        if ins is None and q.nf in self.failed:
            pass           # nothing to insert: the asker's agent proposes anew (``lookup``)
        elif ins is None:
            # steered: an asker other than this node sent the head InsertReq(key, nf, q.seen)
            # along with its query: when that request is the one this tail would send, it counts
            # as sent (the retry timer covers its loss)
            base = rec.ver if rec else 0
            asked = self.view.steered and src != self.id and q.seen == base
            self._inserting[q.key] = _Insert(q.nf, base if asked else -1, now)
        self._serve(q.key, now)

    def _serve(self, key: bytes, now: float, force: bool = False) -> None:
        """Tail: answer the key's waiters, or (re)start its insert through the head."""
        rec = self.store.get(key)
        if rec is not None and rec.nf:
            if not rec.committed:
                self._commit(key, now)
            else:
                self._answer_waiters(key, rec, now)
            return
        ins = self._inserting.get(key)
        if ins is None:
            return
        base = rec.ver if rec else 0
        if force or ins.base != base:
            ins.base, ins.sent = base, now
            self.stats["inserts"] += 1
            self._send(self.view.chain(key)[0], InsertReq(key, ins.nf, base), now)

    def _answer_waiters(self, key: bytes, rec: _Rec, now: float) -> None:
        if rec.nf in self.failed:
            # an entry of a purged NF: deleted, not answered (the waiters' retried lookups,
            # proposed anew, insert the entry they get)
            if key not in self._deleting:
                self._request_delete(key, rec.ver, now)
            return
        self._inserting.pop(key, None)
        for asker, (packet, lookup) in sorted(self._waiters.pop(key, {}).items()):
            # the answer leaves first: the connection's next packets (the reply to this one)
            # wait at the asker for it, and forwarding may hand the CPU to the switch
            self._send(asker, Answer(key, rec.ver, rec.nf, bool(packet), lookup), now)
            if packet:
                self.stats["released"] += 1
                self._out.append(Forward(key, rec.nf, packet))

    def _on_head_request(self, src: str, epoch: int, req, now: float,
                         packet: bytes = b"", lookup: int = 0) -> bool:
        """Serve an InsertReq or DeleteReq as the key's head; True if it started a write."""
        chain = self.view.chain(req.key)
        if chain[0] != self.id:
            return False                              # not the head here: the sender retries
        if not self.synced:
            self._deferred.append((src, epoch, req))
            return False
        rec = self.store.get(req.key)
        cur = rec.ver if rec else 0
        live = rec is not None and bool(rec.nf)
        if isinstance(req, InsertReq):
            if req.nf in self.failed:
                return False          # a stale proposal: its asker proposes again (``lookup``)
            if not live and req.base >= cur:
                ver = max(cur, req.base) + 1
                if rec is None:
                    # a key no node remembers (or whose tombstone expired): its versions
                    # start above any of an earlier life still in flight
                    ver = max(ver, self._version_floor(now))
                self._apply(req.key, ver, req.nf, now)
                self._propagate(req.key, chain, now, packet, lookup)
                return True
            if src == self.id or src != chain[-1]:
                # an asker: the tail answers its query (only the node its packet rode to may
                # answer it, or the packet would be sent twice), and tells it of a deletion it
                # has not heard of (on the same link as its answers, which a Gone from here
                # could overtake)
                pass
            elif live and rec.committed:
                # the tail lacks the committed entry: hand it the committed value, down the
                # chain (in order with any later write of the key: a direct Write could arrive
                # after a deletion's tombstone expired there, and recreate the entry)
                self._propagate(req.key, chain, now)
            elif not live and req.base < cur:
                # the tail expired a deletion (a tombstone) while this one waited for its
                # ack: send it down the chain again, in order
                self._propagate(req.key, chain, now)
        elif live and req.ver in (0, cur):
            self._apply(req.key, cur + 1, "", now)
            self.stats["deletes"] += 1
            self._propagate(req.key, chain, now)
        else:
            self._send(src, Gone(req.key, max(cur, req.ver + 1) if not live else cur), now)
        return False

    def _version_floor(self, now: float) -> int:
        """The first version of a key inserted at ``now`` while no node holds it: higher than
        every version of the key's earlier lives, which ended (their tombstones expired) at
        least ``tombstone_ttl`` ago, each within one window of that length (2**20 writes)."""
        return (int(now // self.tombstone_ttl) << VERSION_WINDOW_BITS) + 1

    def _propagate(self, key: bytes, chain: tuple[str, ...], now: float,
                   packet: bytes = b"", lookup: int = 0) -> None:
        if len(chain) == 1:
            self._commit(key, now)
        else:
            rec = self.store[key]
            self._send(chain[1], Write(key, rec.ver, rec.nf, packet, lookup if packet else 0),
                       now)

    def _on_write(self, w: Write, now: float) -> None:
        chain = self.view.chain(w.key)
        if self.id not in chain:
            return
        rec = self.store.get(w.key)
        newer = rec is None or w.ver > rec.ver
        rec = self._apply(w.key, w.ver, w.nf, now)
        if chain[-1] == self.id:
            if w.packet and rec.ver == w.ver and rec.nf:
                # the head's own lookup: answered, with its packet, as the key commits
                self._waiters.setdefault(w.key, {})[chain[0]] = (w.packet, w.lookup)
            if self.synced:
                self._commit(w.key, now)
        elif rec.ver == w.ver:
            # (again: a head sending down a write that a restarted successor lost, a committed
            # value a tail lacks, or a tombstone a successor expired)
            self._send(chain[chain.index(self.id) + 1],
                       Write(w.key, rec.ver, rec.nf, w.packet, w.lookup), now)

    def _commit(self, key: bytes, now: float) -> None:
        """Tail: the key's current version is committed."""
        rec = self.store[key]
        first = rec.cver < rec.ver
        rec.cver = max(rec.cver, rec.ver)
        if rec.nf in self.failed:
            # an insert of an NF that failed while it was in flight: deleted, not answered
            self._ack_up(key, rec.ver, rec.nf, now)
            self._answer_waiters(key, rec, now)
        elif rec.nf:
            self._answer_waiters(key, rec, now)     # first: the waiting packets are on hold
            self._ack_up(key, rec.ver, rec.nf, now)
            if first and rec.ver > 1:
                # a re-insert: every version before it is deleted (its tombstone may have
                # been superseded here before it committed, or its Gone lost with a tail
                # that left)
                self._announce_gone(key, rec.ver, now)
        else:
            self._ack_up(key, rec.ver, "", now)
            self._announce_gone(key, rec.ver, now)
            # waiters asked about the deleted connection (or are stale duplicates): an asker
            # still pending retries and gets a new entry; nothing is revived on its behalf
            self._waiters.pop(key, None)
            self._inserting.pop(key, None)

    def _announce_gone(self, key: bytes, ver: int, now: float) -> None:
        """Tail: tell every member (itself too) that versions of ``key`` below ``ver`` are
        deleted."""
        for m in self.view.members:
            self._send(m, Gone(key, ver), now)

    def _on_ack(self, a: Ack, now: float) -> None:
        # a version committed at a tail stays committed: acks of older epochs count too
        rec = self.store.get(a.key)
        if rec is None or rec.ver < a.ver:
            if rec is None and self.id not in self.view.chain(a.key):
                return
            # the ack overtook the write (a lost frame is being retransmitted), or the write
            # never reaches this node (its sender failed while a new tail committed what it
            # synced): the acked version is committed, so its value is taken from the ack
            rec = self._apply(a.key, a.ver, a.nf, now)
        self._committed_up_to(a.key, rec, a.ver, a.nf, now)

    def _committed_up_to(self, key: bytes, rec: _Rec, ver: int, nf: str, now: float) -> None:
        """Learned that ``ver`` (of value ``nf``) is committed: record it, tell the predecessor."""
        if ver > rec.cver:
            rec.cver = ver
            self._ack_up(key, ver, nf, now)

    def _ack_up(self, key: bytes, ver: int, nf: str, now: float) -> None:
        chain = self.view.chain(key)
        if self.id in chain:
            i = chain.index(self.id)
            if i > 0:
                self._send(chain[i - 1], Ack(key, ver, nf), now)

    def _on_answer(self, src: str, a: Answer, now: float) -> None:
        p = self._pending.get(a.key)
        if p is None:
            return
        if a.lookup != p.lookup:
            if p.rode:
                return     # about an earlier lookup of the key: this one's packet is out there
            a = replace(a, released=False)          # (the packet it released was not ours)
        waited = p.rode and not self._rider_settled(p)
        if src == p.rode:
            # the packet's tail has spoken: its answer to the packet's query came first (one
            # FIFO link), so if it forwarded the packet, this node now knows to which NF
            p.heard = True
            if a.released and a.nf and a.nf not in self.failed:
                p.nf = p.went = a.nf  # the connection stays where its first packet went
        if a.nf and (a.ver < self._gone.get(a.key, 0) or a.nf in self.failed):
            # a version this node knows deleted, or an NF it purged: the lookup goes on (its
            # retry finds the entry that replaces it, or inserts ``p.nf``), but a packet the
            # tail sent with it is not sent again
            p.released = p.released or a.released
            if waited and self._rider_settled(p):
                self._query(a.key, now)
            return
        if not a.nf and p.nf:
            # no entry, to a lookup that asked only while its packet's tail was not heard from
            if waited and self._rider_settled(p):
                self._query(a.key, now)
            return
        if not (a.released or p.released) and p.rode and src != p.rode \
                and not self._rider_settled(p):
            # the tail the packet rode to may have forwarded it and its answer be on the way
            # (the view changed since): hold this answer until that tail's answer, or its
            # SyncDone of a later epoch (sent after anything it sent before), or its leaving
            p.held = a
            return
        del self._pending[a.key]
        if not a.nf:                  # a query-only lookup: no entry (nothing cached)
            self._out.append(Decision(a.key, ""))
            return
        self.cache[a.key] = (a.ver, a.nf)
        self.stats["decisions"] += 1
        released = a.released or p.released
        if released and p.went and a.nf != p.went:
            # the packet went to p.went under an entry deleted since, and another node's
            # insert now names another NF: the connection goes there, its first packet too
            # (sent again by the agent: at least once then)
            released = False
        self._out.append(Decision(a.key, a.nf, released))

    def _rider_settled(self, p: _Pending) -> bool:
        """Nothing more can come from the tail ``p``'s packet rode to."""
        return (not p.rode or p.heard or p.rode not in self.view.members
                or self._done_from.get(p.rode, 0) > p.rode_epoch)

    def _release_held(self, now: float, requery: bool = True) -> None:
        """Decide the held answers whose packet's tail has settled, and let the lookups that
        waited for it insert again."""
        for key, p in list(self._pending.items()):
            if not p.rode or p.heard or not self._rider_settled(p):
                continue
            p.heard = True
            if p.held is not None:
                held, p.held = p.held, None
                self._on_answer(p.rode, held, now)
            elif requery:
                self._query(key, now)

    def _on_gone(self, g: Gone, now: float) -> None:
        if g.ver > self._gone.get(g.key, 0):
            self._gone[g.key] = g.ver
            self._gone_order.append((now, g.key, g.ver))
            p = self._pending.get(g.key)
            if p is not None:
                if p.held is not None and p.held.ver < g.ver:
                    p.held = None
                self._query(g.key, now)
        hit = self.cache.get(g.key)
        if hit is not None and hit[0] < g.ver:
            del self.cache[g.key]
        d = self._deleting.get(g.key)
        if d is not None and d.ver < g.ver:
            del self._deleting[g.key]

    def _query(self, key: bytes, now: float) -> None:
        p = self._pending[key]
        p.sent = now
        seen = self._gone.get(key, 0)
        chain = self.view.chain(key)
        if not p.nf:                          # ask only: no insert, no packet riding
            self._send(chain[-1], Query(key, "", seen, lookup=p.lookup), now)
            return
        if p.rode and not self._rider_settled(p):
            # the packet rode to a tail not heard from since: it may have forwarded it, to an
            # NF this node learns only from its answer. Ask without inserting until then: an
            # insert of this node's own proposal after a deletion would split the connection
            self._send(chain[-1], Query(key, "", seen, lookup=p.lookup), now)
            return
        # the first packet rides once (a retry leaves it with the asker), to the tail
        packet = b""
        if chain[-1] != self.id and p.packet:
            packet, p.packet = p.packet, b""
            p.rode, p.rode_epoch = chain[-1], self.view.epoch
        if not self.view.steered:
            # patent: the tail answers, or starts the insert through the head (``_on_query``)
            self._send(chain[-1], Query(key, p.nf, seen, packet, p.lookup), now)
            return
        # the head inserts a new key right away, in parallel with the query (see ``_on_query``)
        if chain[0] == self.id:
            # this node is the head: a write it starts carries the packet and stands for
            # the query (the tail answers the head on commit)
            if self._on_head_request(self.id, self.view.epoch, InsertReq(key, p.nf, seen), now,
                                     packet, p.lookup) and packet:
                return
        elif chain[-1] != self.id:
            self._send(chain[0], InsertReq(key, p.nf, seen), now)
        self._send(chain[-1], Query(key, p.nf, seen, packet, p.lookup), now)

    def _request_delete(self, key: bytes, ver: int, now: float) -> None:
        self._deleting[key] = _Delete(ver, now)
        self._send(self.view.chain(key)[0], DeleteReq(key, ver), now)
