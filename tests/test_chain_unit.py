"""Unit tests of the chain engine (agents.chain), one message path at a time.

Every test drives ``ChainNode`` through its public API only. ``Net`` below holds the frames
in flight, so that a test can deliver, drop, duplicate or reorder any one frame by hand;
``chainsim.Sim`` runs the larger randomized cases.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
from dataclasses import replace

import pytest

from agents.chain import (MAX_RIDER, RING_VNODES, VARIANTS, ChainNode, Decision, Forward, Send,
                          View)
from agents.keys import flow_key
from agents.messages import (Ack, Answer, DeleteReq, Frame, Gone, InsertReq, Query, Sync,
                             SyncDone, SyncEntry, Write)
from agents.wire import decode, encode
from chainsim import Fault, Sim
from test_steering import choice

RTO = 0.2
RETRY = 1.0
SECRET = b"unit-test-secret-0123456789abcdef"


def key(i: int) -> bytes:
    return flow_key("10.0.1.1", "10.0.2.1", 6, 10000 + i, 5201)


KEYS = [key(i) for i in range(3000)]


def find_key(pred, start: int = 0) -> bytes:
    """The first test key (from ``start``) whose placement satisfies ``pred(key)``."""
    for k in KEYS[start:]:
        if pred(k):
            return k
    raise AssertionError("no test key satisfies the placement wanted")


def kind(frame: Frame) -> str:
    return "ack" if frame.body is None else type(frame.body).__name__


class Net:
    """Chain nodes plus the frames in flight between them, delivered by the test.

    ``flight`` is FIFO: delivering from its front keeps every link in order. Frames sent to
    a node in ``down`` vanish. ``sent`` logs every Send as ``(src, dst, frame)``.
    """

    def __init__(self, view: View, **kw):
        self.now = 0.0
        self.kw = kw
        self.nodes: dict[str, ChainNode] = {}
        self.flight: list[tuple[str, str, Frame]] = []
        self.sent: list[tuple[str, str, Frame]] = []
        self.decisions: list[tuple[str, Decision, bool]] = []   # node, decision, synced then
        self.forwards: list[tuple[str, Forward]] = []             # node, packet it sent
        self.down: set[str] = set()
        for m in view.members:
            self.add(m, view)

    def add(self, name: str, view: View) -> ChainNode:
        node = self.nodes[name] = ChainNode(name, view, rto=RTO, retry=RETRY, **self.kw)
        return node

    def feed(self, src: str, actions: list) -> list:
        for a in actions:
            if isinstance(a, Decision):
                self.decisions.append((src, a, self.nodes[src].synced))
            elif isinstance(a, Forward):
                self.forwards.append((src, a))
            elif isinstance(a, Send):
                assert isinstance(a.msg, Frame) and a.msg.src == src, a
                self.sent.append((src, a.dst, a.msg))
                if a.dst not in self.down:
                    self.flight.append((src, a.dst, a.msg))
            else:
                raise AssertionError(f"unknown action {a!r}")
        return actions

    # -- driving nodes (every result goes through feed)
    def lookup(self, name, k, nf, packet=b""):
        return self.feed(name, self.nodes[name].lookup(k, nf, self.now, packet))

    def delete(self, name, k):
        return self.feed(name, self.nodes[name].delete(k, self.now))

    def purge(self, name, nf):
        return self.feed(name, self.nodes[name].purge_nf(nf, self.now))

    def set_view(self, name, view):
        return self.feed(name, self.nodes[name].set_view(view, self.now))

    def tick(self, name):
        return self.feed(name, self.nodes[name].tick(self.now))

    def receive(self, src, dst, frame):
        if dst in self.down:
            return []
        return self.feed(dst, self.nodes[dst].receive(src, frame, self.now))

    # -- the network
    def take(self, pred) -> list[tuple[str, str, Frame]]:
        """Remove (and return) the frames in flight matching ``pred(src, dst, frame)``."""
        hit = [f for f in self.flight if pred(*f)]
        self.flight = [f for f in self.flight if not pred(*f)]
        return hit

    def run(self, stop=None, drop=None, limit: int = 100_000) -> None:
        """Deliver in FIFO order until nothing is in flight, or the next frame matches ``stop``."""
        for _ in range(limit):
            if not self.flight or (stop is not None and stop(*self.flight[0])):
                return
            src, dst, frame = self.flight.pop(0)
            if drop is None or not drop(src, dst, frame):
                self.receive(src, dst, frame)
        raise AssertionError("the network did not go quiet")

    def start(self) -> None:
        for name in list(self.nodes):
            self.tick(name)
        self.run()
        self.flush()

    def flush(self) -> None:
        """Timers at the current time: the delayed pure acks go out and are delivered."""
        for name in list(self.nodes):
            if name not in self.down:
                self.tick(name)
        self.run()

    def settle(self, duration: float = 3.0, step: float = 0.1) -> None:
        """Deliver everything, letting timers fire, for ``duration`` simulated seconds."""
        end = self.now + duration
        self.run()
        while self.now < end:
            self.now = round(self.now + step, 6)
            for name in list(self.nodes):
                if name not in self.down:
                    self.tick(name)
            self.run()

    # -- what happened
    def data(self, since: int = 0, body=None) -> list[tuple[str, str, Frame]]:
        """Data frames sent (from log index ``since``), optionally of one body type."""
        return [(s, d, f) for s, d, f in self.sent[since:]
                if f.body is not None and (body is None or isinstance(f.body, body))]

    def decided(self, name: str | None = None) -> list[tuple[str, bytes, str]]:
        return [(n, d.key, d.nf) for n, d, _ in self.decisions if name in (None, n)]


def sends(actions) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def data_sends(actions) -> list[Send]:
    return [a for a in sends(actions) if a.msg.body is not None]


def three() -> tuple[Net, View]:
    view = View(1, ("a", "b", "c"), 3)
    net = Net(view)
    net.start()
    assert all(n.synced for n in net.nodes.values())
    return net, view


# ============================================================================ View

@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("chain_len", [1, 2, 3, 4])
def test_view_chain_length_is_min_of_chain_len_and_members(n, chain_len):
    members = tuple(f"lb{i}" for i in range(1, n + 1))
    view = View(1, members, chain_len)
    for k in KEYS[:200]:
        c = view.chain(k)
        assert len(c) == min(chain_len, n)
        assert len(set(c)) == len(c)
        assert set(c) <= set(members)


def test_view_chain_is_the_head_and_its_next_picks():
    """The head does not depend on L; a longer chain adds the next-ranked node after the tail."""
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    for steering in ((), ("lb2", "lb1", "", "lb5", "lb3", "lb4")):
        chains = {L: View(1, members, L, steering) for L in range(1, 6)}
        for k in KEYS[:300]:
            head = chains[1].chain(k)[0]
            for L in range(1, 5):
                shorter, longer = chains[L].chain(k), chains[L + 1].chain(k)
                assert shorter[0] == head, "the head is the first node of the chain"
                assert longer[:-1] == shorter, (L, shorter, longer)


def test_view_every_node_is_head_middle_and_tail_of_some_keys():
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    view = View(1, members, 3)
    count = {m: {"head": 0, "middle": 0, "tail": 0} for m in members}
    for k in KEYS[:2000]:
        h, mid, t = view.chain(k)
        count[h]["head"] += 1
        count[mid]["middle"] += 1
        count[t]["tail"] += 1
    for m in members:
        for role, n in count[m].items():
            # 400 expected per role; a node never picked, or picked for every key, fails this
            assert 150 < n < 700, (m, role, count[m])


def test_view_placement_is_stable_across_view_instances():
    members = ("lb1", "lb2", "lb3", "lb4")
    a = View(1, members, 3)
    b = View(9, members, 3)
    c = View(2, tuple(reversed(members)), 3)     # the same set, listed in another order
    for k in KEYS[:500]:
        assert a.chain(k) == b.chain(k) == c.chain(k) == View(1, members, 3).chain(k)


@pytest.mark.parametrize("slots", [(), ("lb1", "lb2", "lb3", "lb4", "lb5")])
def test_view_removing_or_adding_a_member_moves_only_the_chains_it_is_in(slots):
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    less_slots = tuple("" if m == "lb3" else m for m in slots)   # the others keep their slots
    for L in (1, 3):
        full = View(1, members, L, slots)
        less = View(2, tuple(m for m in members if m != "lb3"), L, less_slots)
        heads_moved = 0
        for k in KEYS[:2000]:
            old, new = full.chain(k), less.chain(k)
            if "lb3" not in old:
                assert new == old, (k, old, new)
            else:       # the others keep their ranks; the next pick joins after them
                assert new[:-1] == tuple(m for m in old if m != "lb3"), (old, new)
            heads_moved += old[0] != new[0]
            # adding lb3 back is the same comparison the other way round
            assert full.chain(k) == old
        # only keys that lb3 headed change their head: about a fifth
        assert 0.1 < heads_moved / 2000 < 0.3, heads_moved


def gateway_choice(steering: tuple[str, ...], k: bytes) -> str:
    """The LB node OVS's bundle steers ``k`` to; '' is an empty slot, which OVS skips."""
    return steering[choice(k, [i for i, m in enumerate(steering) if m])]


def test_view_chains_are_the_gateways_picks_in_its_order():
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    steering = ("lb2", "lb1", "", "lb5", "lb3", "lb4")     # the gateway's slots, one empty
    for L in (1, 3, 5):
        view = View(1, members, L, steering)
        for k in KEYS[:500]:
            c = view.chain(k)
            assert c[0] == gateway_choice(steering, k), "the node a connection arrives at heads it"
            # the gateway's next picks, were the nodes before them away, follow in order
            rest = steering
            for m in c:
                assert m == gateway_choice(rest, k)
                rest = tuple("" if x == m else x for x in rest)
    # a key the gateway cannot hash (not IPv4) is placed all the same, the same way everywhere
    v6 = flow_key("fd00::1", "fd00::2", 6, 1, 2)
    assert View(1, members, 3, steering).chain(v6) == View(7, members, 3, steering).chain(v6)
    assert len(set(View(1, members, 3, steering).chain(v6))) == 3


@pytest.mark.parametrize("args", [
    (1, ("a", "b", "a"), 2),       # duplicate member
    (1, ("a", "b"), 0),            # chain_len 0
    (1, ("a", "b"), -1),
    (-1, ("a", "b"), 2),           # negative epoch
    (1, ("a", "b"), 2, ("a",)),    # a steering order that is not of the members
    (1, ("a", "b"), 2, ("a", "c")),
    (1, ("a", "b"), 2, ("a", "", "a")),
])
def test_view_rejects_bad_views(args):
    with pytest.raises(ValueError):
        View(*args)


def test_view_members_list_is_normalized_to_a_tuple():
    view = View(1, ["a", "b"], 2)
    assert view.members == ("a", "b")
    assert hash(view) == hash(View(1, ("a", "b"), 2))


# ============================================================================ one node

def test_single_node_decides_at_once_and_then_hits_its_cache():
    node = ChainNode("a", View(1, ("a",), 1))
    k = key(1)
    out = node.lookup(k, "nf1", 0.0)
    assert out == [Decision(k, "nf1")], "one node is head and tail: no frame, an immediate decision"
    assert node.synced
    assert node.replica() == {k: "nf1"}
    assert node.version(k) == 1
    assert node.uncommitted() == {}
    # the second lookup proposes another NF but gets the committed one, from the cache
    assert node.lookup(k, "nf2", 0.1) == [Decision(k, "nf1")]
    assert k in node.cache
    assert node.replica() == {k: "nf1"} and node.version(k) == 1


def test_single_node_delete_then_lookup_inserts_a_new_entry():
    node = ChainNode("a", View(1, ("a",), 1))
    k = key(2)
    node.lookup(k, "nf1", 0.0)
    assert node.delete(k, 0.1) == []
    assert node.replica() == {} and k not in node.cache
    assert node.version(k) == 2                     # the tombstone
    assert node.lookup(k, "nf2", 0.2) == [Decision(k, "nf2")]
    assert node.replica() == {k: "nf2"} and node.version(k) == 3


# ============================================================================ 3-node chain

def test_lookup_path_query_insert_write_ack_answer():
    net, view = three()
    k = KEYS[0]
    h, m, t = view.chain(k)
    mark = len(net.sent)

    out = net.lookup(m, k, "nf1")
    # the asker queries the tail and, in parallel, asks the head to insert its proposal
    assert [(s.dst, s.msg.body) for s in sends(out)] == [(h, InsertReq(k, "nf1", 0)),
                                                         (t, Query(k, "nf1", 0, lookup=1))]
    assert not [a for a in out if isinstance(a, Decision)]

    # deliver until the tail's first Ack is next: the write went down, nothing acked yet
    net.run(stop=lambda s, d, f: isinstance(f.body, Ack))
    assert net.nodes[h].uncommitted() == {k: 1}, "the head keeps the write in its sent list"
    assert net.nodes[m].uncommitted() == {k: 1}
    assert net.nodes[t].uncommitted() == {}, "the write commits at the tail"
    assert net.nodes[t].replica() == {k: "nf1"}
    assert net.nodes[h].replica() == {} and net.nodes[m].replica() == {}
    assert net.decided() == [(m, k, "nf1")], "the tail answers the waiting asker before it acks"

    net.run()
    flow = [(s, d, kind(f)) for s, d, f in net.data(mark)]
    assert [x for x in flow if x[2] == "Query"] == [(m, t, "Query")]
    assert [x for x in flow if x[2] == "InsertReq"] == [(m, h, "InsertReq")], \
        "the tail does not repeat the asker's insert request"
    assert [x for x in flow if x[2] == "Write"] == [(h, m, "Write"), (m, t, "Write")]
    assert [x for x in flow if x[2] == "Ack"] == [(t, m, "Ack"), (m, h, "Ack")]
    assert [x for x in flow if x[2] == "Answer"] == [(t, m, "Answer")]
    assert flow.index((m, t, "Write")) < flow.index((t, m, "Ack")) < flow.index((m, h, "Ack"))
    assert flow.index((t, m, "Answer")) < flow.index((t, m, "Ack"))
    assert {f.body for _, _, f in net.data(mark, Write)} == {Write(k, 1, "nf1")}
    assert {f.body for _, _, f in net.data(mark, Ack)} == {Ack(k, 1, "nf1")}
    assert [f.body for _, _, f in net.data(mark, InsertReq)] == [InsertReq(k, "nf1", 0)]
    assert [f.body for _, _, f in net.data(mark, Answer)] == [Answer(k, 1, "nf1", lookup=1)]

    assert net.decided() == [(m, k, "nf1")]
    for name in view.members:
        node = net.nodes[name]
        assert node.uncommitted() == {}, name
        assert node.replica() == {k: "nf1"}, name
        assert node.version(k) == 1
    # the asker caches the committed answer: the next lookup is decided at once, no frame
    assert net.nodes[m].cache[k] == (1, "nf1")
    assert net.lookup(m, k, "nf2") == [Decision(k, "nf1")]
    assert net.flight == []
    assert net.nodes[h].roles()["head"] == 1
    assert net.nodes[m].roles()["middle"] == 1
    assert net.nodes[t].roles()["tail"] == 1


def test_first_packet_rides_with_the_query_and_the_tail_forwards_it_on_commit():
    net, view = three()
    k = KEYS[0]
    h, m, t = view.chain(k)
    out = net.lookup(m, k, "nf1", b"SYN")
    assert [s.msg.body for s in sends(out) if s.dst == t] == [Query(k, "nf1", 0, b"SYN", 1)]
    # the tail holds the packet until the write commits, then sends it before it answers
    net.run(stop=lambda s, d, f: isinstance(f.body, Answer))
    assert net.forwards == [(t, Forward(k, "nf1", b"SYN"))]
    assert net.decided() == []
    net.run()
    assert [f.body for _, _, f in net.data(0, Answer)] == [Answer(k, 1, "nf1", True, 1)]
    assert [(n, d) for n, d, _ in net.decisions] == [(m, Decision(k, "nf1", True))]
    assert net.nodes[t].stats["released"] == 1
    # the packet rode once: nothing else carries it, and a later lookup is a cache hit
    assert [f.body.packet for _, _, f in net.data(0, Query)] == [b"SYN"]
    assert all(not f.body.packet for _, _, f in net.data(0, Write))
    assert net.lookup(m, k, "nf2", b"more") == [Decision(k, "nf1")]
    assert len(net.forwards) == 1


def test_a_head_asker_sends_no_query_its_write_carries_the_packet():
    net, view = three()
    k = KEYS[0]
    h, m, t = view.chain(k)
    out = net.lookup(h, k, "nf1", b"SYN")
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [(m, Write(k, 1, "nf1", b"SYN", 1))]
    net.run(stop=lambda s, d, f: isinstance(f.body, Answer))
    assert [f.body for _, d, f in net.data(0, Write) if d == t] == [Write(k, 1, "nf1", b"SYN", 1)]
    assert net.forwards == [(t, Forward(k, "nf1", b"SYN"))], "L-1 hops: forwarded on commit"
    net.run()
    assert [(s, d, f.body) for s, d, f in net.data(0, Answer)] == [
        (t, h, Answer(k, 1, "nf1", True, 1))]
    assert [(n, d) for n, d, _ in net.decisions] == [(h, Decision(k, "nf1", True))]
    assert net.data(0, Query) == [] and net.data(0, InsertReq) == []
    for name in view.members:
        assert net.nodes[name].replica() == {k: "nf1"}, name


def test_a_head_asker_of_a_key_being_written_queries_the_tail_with_its_packet():
    net, view = three()
    k = KEYS[0]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")                          # another node's insert is under way
    net.run(stop=lambda s, d, f: isinstance(f.body, Write) and d == t)
    out = net.lookup(h, k, "nf2", b"SYN")
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [(t, Query(k, "nf2", 0, b"SYN", 1))]
    (query,) = net.take(lambda s, d, f: isinstance(f.body, Query) and s == h)
    net.receive(*query)                              # the tail waits for the write in flight
    net.run()
    assert net.forwards == [(t, Forward(k, "nf1", b"SYN"))], "sent to the committed NF"
    assert [d for n, d, _ in net.decisions if n == h] == [Decision(k, "nf1", True)]


def test_the_tail_as_asker_keeps_its_first_packet():
    net, view = three()
    k = KEYS[0]
    t = view.chain(k)[-1]
    net.lookup(t, k, "nf1", b"SYN")
    net.run()
    assert net.forwards == []
    assert [d for _, d, _ in net.decisions] == [Decision(k, "nf1", False)]
    assert all(f.body.packet == b"" for _, _, f in net.data(0, Query))


def test_a_committed_entry_is_answered_without_forwarding_the_packet():
    net, view = three()
    k = KEYS[1]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    net.run()
    net.lookup(h, k, "nf2", b"SYN2")    # the entry exists: the asker sends its packet itself
    net.run()
    assert net.forwards == []
    assert [d for n, d, _ in net.decisions if n == h] == [Decision(k, "nf1", False)]


def test_a_packet_too_long_to_ride_stays_with_the_asker():
    net, view = three()
    k = KEYS[0]
    h = view.chain(k)[0]
    net.lookup(h, k, "nf1", b"x" * (MAX_RIDER + 1))
    net.run()
    assert net.forwards == []
    assert [f.body.packet for _, _, f in net.data(0, Query)] == [b""]
    assert [d for _, d, _ in net.decisions] == [Decision(k, "nf1", False)]


def test_a_packet_lost_with_its_tail_is_sent_by_the_asker():
    view1 = View(1, ("a", "b", "c"), 1)
    view2 = View(2, ("a", "b"), 1)
    net = Net(view1)
    net.start()
    k = find_key(lambda k: view1.chain(k) == ("c",) and view2.chain(k) == ("b",))
    net.down.add("c")                            # c fails with the query and its packet
    net.lookup("a", k, "nf1", b"SYN")
    net.set_view("a", view2)
    net.set_view("b", view2)
    net.run()
    assert [f.body for s, d, f in net.data(0, Query) if d == "b"] == [Query(k, "nf1", 0, lookup=1)], \
        "a query sent again carries no packet"
    assert net.forwards == []
    assert [d for _, d, _ in net.decisions] == [Decision(k, "nf1", False)]


def test_a_retried_query_does_not_drop_the_packet_the_tail_holds():
    net, view = three()
    k = KEYS[0]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1", b"SYN")
    net.take(lambda s, d, f: isinstance(f.body, InsertReq))   # the insert request is lost
    net.run()
    net.flush()                                  # the query is acked: no backlog to the tail
    assert net.decided() == [] and net.forwards == []
    net.now += RETRY                             # the asker asks again, with no packet and
    net.tick(m)                                  # without inserting (its packet's tail is not
    net.run()                                    # heard from); the tail, whose insert is under
    net.settle(1.0)                              # way, does not answer "no entry": the
    #                                              insert (the lost request sent again) commits
    assert [(f.body.packet, f.body.nf) for _, d, f in net.data(0, Query) if d == t] == \
        [(b"SYN", "nf1"), (b"", "")]
    assert net.forwards == [(t, Forward(k, "nf1", b"SYN"))]
    assert [d for _, d, _ in net.decisions] == [Decision(k, "nf1", True)]


def test_tail_answers_a_committed_entry_without_a_new_write():
    net, view = three()
    k = KEYS[1]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    net.run()
    mark = len(net.sent)
    net.lookup(h, k, "nf2")             # h has no cached answer: it asks the tail
    net.run()
    assert [(s, d, f.body) for s, d, f in net.data(mark)] == [
        (h, t, Query(k, "nf2", 0, lookup=1)), (t, h, Answer(k, 1, "nf1", lookup=1))]
    assert net.decided(h) == [(h, k, "nf1")]
    assert net.nodes[h].cache[k][1] == "nf1"


def test_a_first_packet_is_sent_once_when_two_askers_race():
    """Issue class 1 (L=2): the outside asker's query, with its packet, reaches the tail before
    the head's write commits; the tail forwards that packet on commit. The head, which then
    holds the committed entry, must not answer the asker too (a not-released answer makes the
    asker send its packet a second time): only the tail answers it."""
    view = View(1, ("a", "b", "c"), 2)
    net = Net(view)
    net.start()
    k = find_key(lambda k: view.chain(k) == ("a", "b"))
    net.lookup("a", k, "nf1", b"pa")                       # the head writes, its packet rides
    net.lookup("c", k, "nf2", b"pc")                       # InsertReq -> a, Query(pc) -> b
    (query,) = net.take(lambda s, d, f: s == "c" and isinstance(f.body, Query))
    (ins,) = net.take(lambda s, d, f: s == "c" and isinstance(f.body, InsertReq))
    net.receive(*query)                                    # a waiter at the tail, with pc
    (write,) = net.take(lambda s, d, f: s == "a" and isinstance(f.body, Write))
    net.receive(*write)                                    # commit: pa and pc forwarded
    to_c = net.take(lambda s, d, f: s == "b" and d == "c")  # the tail's answer is slow
    net.run()                                              # the head learns the commit
    net.receive(*ins)                                      # then c's insert request
    net.run()
    for frame in to_c:
        net.receive(*frame)
    net.settle(1.0)
    (decision,) = [d for n, d, _ in net.decisions if n == "c"]
    forwarded = [f.packet for _, f in net.forwards]
    assert sorted(forwarded) == [b"pa", b"pc"]
    assert decision.nf == "nf1" and decision.released, "only the tail answered c"
    assert forwarded.count(b"pc") + (not decision.released) == 1


@pytest.mark.parametrize("first", [0, 1])
def test_first_writer_wins(first):
    net, view = three()
    k = KEYS[2]
    h, m, t = view.chain(k)
    askers = [(m, "nf1"), (t, "nf2")]
    for name, nf in askers:
        net.lookup(name, k, nf)
    # the insert request that reaches the head first decides; deliver that one first
    winner_src, winner_nf = askers[first]
    inserts = net.take(lambda s, d, f: isinstance(f.body, InsertReq))
    assert sorted(x[0] for x in inserts) == sorted([m, t])
    inserts.sort(key=lambda x: x[0] != winner_src)
    for q in inserts:
        net.receive(*q)
    net.run()
    assert sorted(net.decided()) == sorted([(m, k, winner_nf), (t, k, winner_nf)])
    assert len(net.data(body=InsertReq)) == 2, "one insert request per asker, none repeated"
    assert len(net.data(body=Write)) == 2, "one write down the chain"
    for name in view.members:
        assert net.nodes[name].replica() == {k: winner_nf}


def test_insert_request_for_a_live_key_does_not_overwrite_it():
    """The head inserts only if absent: a late InsertReq gets the committed value back, down
    the chain (in order with later writes of the key: explorer class L)."""
    net, view = three()
    k = KEYS[3]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    net.run()
    crafted = next_frame(net, t, h, InsertReq(k, "nf2", 1))
    out = net.receive(t, h, crafted)
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [(m, Write(k, 1, "nf1"))]
    mark = len(net.sent)
    net.run()
    assert (m, t, Write(k, 1, "nf1")) in [(s, d, f.body) for s, d, f in net.data(mark)]
    for name in view.members:
        assert net.nodes[name].replica() == {k: "nf1"}
        assert net.nodes[name].version(k) == 1


def test_one_decision_answers_every_lookup_made_while_pending():
    net, view = three()
    k = KEYS[4]
    h, m, t = view.chain(k)
    first = net.lookup(h, k, "nf1")
    # the head inserts its own proposal at once: the write goes down as the query goes out
    assert sorted((s.dst, kind(s.msg)) for s in data_sends(first)) == [(t, "Query"),
                                                                      (m, "Write")]
    assert net.lookup(h, k, "nf2") == [], "a pending key is not asked again"
    assert net.lookup(h, k, "nf3") == []
    net.lookup(m, k, "nf4")                        # another node, pending too
    net.run()
    assert sorted(net.decided()) == sorted([(h, k, "nf1"), (m, k, "nf1")])
    assert len(net.data(body=Query)) == 2


def test_every_node_holds_keys_as_head_middle_and_tail():
    sim = Sim(["n1", "n2", "n3", "n4", "n5"], 3, seed=1)
    for i, k in enumerate(KEYS[:60]):
        sim.lookup(0.01 * i, f"n{i % 5 + 1}", k, "nf1")
    sim.run(3.0)
    assert len(sim.decisions) == 60
    for name, node in sim.nodes.items():
        r = node.roles()
        assert r["head"] > 0 and r["middle"] > 0 and r["tail"] > 0 and r["handoff"] == 0, (name, r)
        assert len(node.replica()) == r["head"] + r["middle"] + r["tail"]
    assert sum(sum(n.roles().values()) for n in sim.nodes.values()) == 60 * 3


# ============================================================================ reliable links

def test_dropped_frame_is_retransmitted_after_rto_and_applied_once():
    net, view = three()
    k = KEYS[5]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    (lost,) = net.take(lambda s, d, f: isinstance(f.body, Query))
    assert lost[:2] == (m, t)
    net.run()
    assert net.decided() == []
    start = net.now
    net.now = start + RTO / 2
    assert data_sends(net.tick(m)) == [], "no retransmission before the timeout"
    net.now = start + RTO
    out = net.tick(m)
    # the lost query comes back, and after it the write that the tail could not apply
    # ahead of it (a link delivers in order)
    assert [(s.dst, s.msg.seq, s.msg.body) for s in data_sends(out)] == [
        (t, lost[2].seq, lost[2].body), (t, lost[2].seq + 1, Write(k, 1, "nf1"))]
    net.run()
    assert net.decided() == [(m, k, "nf1")]
    assert len(net.data(body=Write)) == 3 and net.nodes[t].version(k) == 1
    net.settle(1.0)
    assert net.decided() == [(m, k, "nf1")], "the retransmitted query is applied once"
    assert len(net.data(body=InsertReq)) == 1 and len(net.data(body=Answer)) == 1


def test_duplicate_query_is_not_answered_twice():
    net, view = three()
    k = KEYS[6]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    (query,) = [x for x in net.flight if isinstance(x[2].body, Query)]
    net.run()
    assert len(net.data(body=Answer)) == 1
    out = net.receive(*query)                      # the network delivers it a second time
    assert data_sends(out) == [], "a duplicate frame is not applied again"
    acks = sends(net.tick(t))
    assert acks and all(s.msg.body is None for s in acks), "but it is acked, on the next tick"
    net.run()
    assert len(net.data(body=Answer)) == 1
    assert net.decided() == [(m, k, "nf1")]


def test_late_duplicate_delete_does_not_delete_the_next_entry():
    net, view = three()
    k = KEYS[7]
    h, m, t = view.chain(k)
    net.lookup(h, k, "nf1")
    net.run()
    net.delete(m, k)                               # m holds no answer: "delete whatever is live"
    (req,) = [x for x in net.flight if isinstance(x[2].body, DeleteReq)]
    assert req[1] == h and req[2].body == DeleteReq(k, 0)
    net.run()
    assert all(k not in n.replica() for n in net.nodes.values())
    net.lookup(h, k, "nf2")                        # a new connection with the same key
    net.run()
    assert net.decided(h)[-1] == (h, k, "nf2")
    out = net.receive(*req)                        # the old DeleteReq, duplicated and late
    assert data_sends(out) == []
    net.run()
    for name in view.members:
        assert net.nodes[name].replica() == {k: "nf2"}, name
        assert net.nodes[name].version(k) == 3


def test_duplicating_every_frame_changes_nothing():
    net, view = three()
    k = KEYS[8]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    for _ in range(1000):
        if not net.flight:
            break
        frame = net.flight.pop(0)
        net.receive(*frame)
        net.receive(*frame)
    counts = {}
    for _, _, f in net.data():
        counts[kind(f)] = counts.get(kind(f), 0) + 1
    # (12 SyncDones: each link's first, sent before the peer's incarnation was known, is
    # refused and sent again, addressed)
    assert counts == {"SyncDone": 12, "Query": 1, "InsertReq": 1, "Write": 2, "Ack": 2,
                      "Answer": 1}
    assert net.decided() == [(m, k, "nf1")]


def test_out_of_order_frames_are_buffered_and_applied_in_order():
    net, view = three()
    k1 = find_key(lambda k: view.chain(k)[-1] == "c")
    k2 = find_key(lambda k: view.chain(k)[-1] == "c" and k != k1)
    net.lookup("a", k1, "nf1")
    net.lookup("a", k2, "nf2")
    q1, q2 = net.take(lambda s, d, f: s == "a" and d == "c")
    assert (q1[2].body.key, q2[2].body.key) == (k1, k2) and q2[2].seq == q1[2].seq + 1

    out = net.receive(*q2)                         # the second frame overtakes the first
    assert data_sends(out) == [], "not applied before the frame it follows"
    assert [s.msg.ack for s in sends(net.tick("c")) if s.dst == "a"] == [q1[2].seq - 1]
    assert net.nodes["c"].version(k2) == 0

    out = net.receive(*q1)                         # the gap fills: both, in order
    assert [s.msg.ack for s in sends(out + net.tick("c")) if s.dst == "a"] == [q2[2].seq]
    net.run()
    assert sorted(net.decided()) == sorted([("a", k1, "nf1"), ("a", k2, "nf2")])
    out = net.receive(*q2)                         # the buffered copy is not applied again
    assert data_sends(out) == []


def test_pure_acks_stop_retransmissions():
    # without pure acks, the last frames of a lookup stay unacknowledged and come back
    net, view = three()
    k = KEYS[9]
    net.lookup("a", k, "nf1")
    net.run()
    assert net.decided() == [("a", k, "nf1")]
    # acks a reply did not carry wait for the next tick, well before the retransmission timeout
    net.now += RTO / 4
    acks = [s for name in view.members for s in sends(net.tick(name))]
    assert acks and all(s.msg.body is None for s in acks)
    assert len(net.take(lambda s, d, f: True)) == len(acks)       # lost
    net.now += RTO
    again = [s for name in view.members for s in sends(net.tick(name))]
    assert any(s.msg.body is not None for s in again)
    # delivering them (and this time their pure acks) silences every timer for good
    net.run()
    net.flush()
    for _ in range(10):
        net.now += RTO
        for name in view.members:
            assert net.tick(name) == [], name
    assert net.decided() == [("a", k, "nf1")]


def test_a_frame_answered_on_the_same_link_is_not_retransmitted():
    net, view = three()
    k = KEYS[1]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")          # m -> t: Write; t -> m: Ack and Answer, on the same link
    net.run()                        # lossless: every frame delivered exactly once
    assert net.decided() == [(m, k, "nf1")]
    net.flush()                      # and the delayed pure acks
    net.now += 1.5 * RTO
    resent = [(name, s.dst, kind(s.msg)) for name in view.members for s in net.tick(name)]
    assert resent == [], "frames delivered and answered are retransmitted"


# ============================================================================ deletes

def committed_everywhere(net: Net, view: View, k: bytes, nf: str) -> None:
    for name in view.members:
        net.lookup(name, k, nf)
        net.run()
    for name in view.members:
        assert k in net.nodes[name].cache, name


def test_delete_goes_through_the_head_commits_at_the_tail_and_drops_cached_answers():
    net, view = three()
    k = KEYS[11]
    h, m, t = view.chain(k)
    committed_everywhere(net, view, k, "nf1")
    mark = len(net.sent)
    out = net.delete(m, k)
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [(h, DeleteReq(k, 1))]
    assert k not in net.nodes[m].cache

    # until the tail commits, the entry stands and other nodes keep their answers
    net.run(stop=lambda s, d, f: isinstance(f.body, Gone))
    assert net.nodes[h].cache[k] == (1, "nf1")
    assert net.nodes[t].uncommitted() == {} and net.nodes[t].version(k) == 2
    assert net.nodes[h].uncommitted() == {k: 2}
    net.run()
    writes = [(s, d, f.body) for s, d, f in net.data(mark, Write)]
    assert writes == [(h, m, Write(k, 2, "")), (m, t, Write(k, 2, ""))]
    gones = net.data(mark, Gone)
    assert {s for s, _, _ in gones} == {t}, "only the tail announces the commit"
    assert {d for _, d, _ in gones} == {h, m}
    assert {f.body for _, _, f in gones} == {Gone(k, 2)}
    for name in view.members:
        node = net.nodes[name]
        assert k not in node.cache, name
        assert node.replica() == {} and node.uncommitted() == {} and node.version(k) == 2

    # a new lookup asks again, and its proposal is inserted
    out = net.lookup(h, k, "nf2")
    assert not [a for a in out if isinstance(a, Decision)]
    # the head heard of the deletion (seen=2): it writes version 3 at once
    assert sorted((s.dst, s.msg.body) for s in data_sends(out)) == sorted(
        [(m, Write(k, 3, "nf2")), (t, Query(k, "nf2", 2, lookup=2))])
    net.run()
    assert net.decided(h)[-1] == (h, k, "nf2")
    for name in view.members:
        assert net.nodes[name].replica() == {k: "nf2"} and net.nodes[name].version(k) == 3


def deleted_key(net: Net, view: View, idx: int) -> bytes:
    k = KEYS[idx]
    committed_everywhere(net, view, k, "nf1")
    net.delete(view.chain(k)[1], k)
    net.run()
    assert all(n.replica() == {} for n in net.nodes.values())
    return k


def next_frame(net: Net, src: str, dst: str, body) -> Frame:
    """A frame ``src`` might send next to ``dst``: the next sequence number on that link."""
    last = [f for s, d, f in net.sent if s == src and d == dst and f.seq][-1]
    return replace(last, seq=last.seq + 1, body=body)


def test_stale_insert_request_does_not_revive_a_deleted_entry():
    net, view = three()
    k = deleted_key(net, view, 12)
    h, m, t = view.chain(k)
    stale = next_frame(net, t, h, InsertReq(k, "nf9", 0))
    out = net.receive(t, h, stale)
    writes = [s.msg.body for s in data_sends(out) if isinstance(s.msg.body, Write)]
    # the head hands the requester the deletion it missed (the tombstone), nothing else
    assert writes == [Write(k, 2, "")]
    assert all(s.msg.ack == stale.seq for s in data_sends(out)), "frame was applied"
    net.run()
    assert net.data(body=Write)[-1][2].body.nf == "", "no Write after the delete's tombstone"
    for name in view.members:
        assert net.nodes[name].replica() == {}, name
        assert net.nodes[name].version(k) == 2, name


def test_stale_query_after_a_delete_gets_gone_and_creates_nothing():
    net, view = three()
    k = deleted_key(net, view, 13)
    h, m, t = view.chain(k)
    mark = len(net.sent)
    stale = next_frame(net, h, t, Query(k, "nf9", 0))
    out = net.receive(h, t, stale)
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [(h, Gone(k, 2))]
    net.run()
    assert net.data(mark, InsertReq) == [] and net.data(mark, Write) == []
    for name in view.members:
        assert net.nodes[name].replica() == {} and net.nodes[name].version(k) == 2, name
    assert [d for d in net.decided() if d[2] == "nf9"] == []


def test_lookup_pending_across_a_delete_is_served_with_a_new_entry():
    """A query sent before a delete and delivered after it gets Gone, not the old entry;
    its asker, still pending, asks again and its proposal is inserted."""
    view = View(1, ("a", "b", "c", "d"), 3)
    net = Net(view)
    net.start()
    k = find_key(lambda k: "d" not in view.chain(k), 14)
    h, _, t = view.chain(k)
    m = "d"                                      # the asker, outside the key's chain
    net.lookup(t, k, "nf1")
    net.run()
    net.lookup(m, k, "nf2")
    held = net.take(lambda s, d, f: s == m and isinstance(f.body, (Query, InsertReq)))
    (query,) = [x for x in held if x[1] == t]
    (insert,) = [x for x in held if x[1] == h]
    assert (query[2].body, insert[2].body) == (Query(k, "nf2", 0, lookup=1), InsertReq(k, "nf2", 0))
    net.delete(t, k)
    net.run()                                    # commits; m hears Gone and asks again
    assert net.nodes[t].version(k) == 2 and net.decided(m) == []
    assert [f.body for s, d, f in net.data(body=Query)][-1] == Query(k, "nf2", 2, lookup=1)
    out = net.receive(*query)
    assert [(s.dst, s.msg.body) for s in data_sends(out)][0] == (m, Gone(k, 2))
    net.receive(*insert)                         # stale (seen=0): only the new one inserts
    net.run()
    assert net.decided(m) == [(m, k, "nf2")]
    for name in view.chain(k):
        assert net.nodes[name].replica() == {k: "nf2"} and net.nodes[name].version(k) == 3


def test_purge_nf_deletes_exactly_the_entries_naming_that_nf():
    view = View(1, ("a", "b", "c", "d"), 2)
    net = Net(view)
    net.start()
    ks = KEYS[20:36]
    want = {k: ("nfA" if i % 2 else "nfB") for i, k in enumerate(ks)}
    for i, k in enumerate(ks):
        net.lookup(view.members[i % 4], k, want[k])
    net.run()
    assert all(n.replica() for n in net.nodes.values())

    # one node purges only the keys it heads
    net.purge("a", "nfA")
    net.run()
    gone_a = {k for k in ks if want[k] == "nfA" and view.chain(k)[0] == "a"}
    assert gone_a, "test keys: a heads some nfA entries"
    for name in view.members:
        expect = {k: v for k, v in want.items() if name in view.chain(k) and k not in gone_a}
        assert net.nodes[name].replica() == expect, name

    before = {name: set(net.nodes[name].cache) for name in view.members}
    for name in view.members:
        net.purge(name, "nfA")
    net.run()
    for name in view.members:
        node = net.nodes[name]
        expect = {k: "nfB" for k, v in want.items() if v == "nfB" and name in view.chain(k)}
        assert node.replica() == expect, name
        assert all(node.version(k) == 1 for k in expect), "nfB entries untouched"
        assert set(node.cache) == {k for k in before[name] if want[k] == "nfB"}, name


# ============================================================================ views

def three_with_entries(ks: list[bytes]) -> tuple[Net, View, list[bytes]]:
    """Nodes a, b, c with chains of 2, and ``ks`` committed (asked by a, b, c in turn)."""
    view = View(1, ("a", "b", "c"), 2)
    net = Net(view)
    net.start()
    for i, k in enumerate(ks):
        net.lookup("abc"[i % 3], k, "nf1")
    net.run()
    return net, view, ks


def test_removed_node_stops_and_its_entries_stay_replicated():
    net, view1, ks = three_with_entries(KEYS[40:60])
    view2 = View(2, ("a", "b"), 2)
    mark = len(net.decisions)
    assert net.set_view("c", view2) == [], "a removed node pushes nothing"
    assert not net.nodes["c"].synced
    k_new = find_key(lambda k: view1.chain(k)[-1] == "c", 100)
    assert net.lookup("c", k_new, "nf1") == []
    assert net.delete("c", ks[0]) == []
    # a, still in view 1, asks c: c answers nothing, not even a link ack
    net.lookup("a", k_new, "nf1")
    (q,) = net.take(lambda s, d, f: d == "c")
    assert net.receive(*q) == []
    net.set_view("a", view2)
    net.set_view("b", view2)
    net.down.add("c")
    net.settle(3.0)
    assert [d for d in net.decisions[mark:] if d[0] == "c"] == []
    net.now += 10
    assert net.nodes["c"].tick(net.now) == []
    for k in ks + [k_new]:
        assert net.nodes["a"].replica()[k] == "nf1" and net.nodes["b"].replica()[k] == "nf1"
    assert ("a", k_new, "nf1") in net.decided("a")


def test_joining_node_gets_its_entries_by_sync_before_acting_as_tail():
    view1 = View(1, ("a", "b"), 1)
    view2 = View(2, ("a", "b", "j"), 1)
    net = Net(view1)
    net.start()
    ks = KEYS[60:120]
    for k in ks:
        net.lookup("a", k, "nf1")
    net.run()
    mine = {k for k in ks if view2.chain(k) == ("j",)}
    assert mine
    k = sorted(mine)[0]

    j = net.add("j", view2)
    assert j.replica() == {} and j.version(k) == 0 and not j.synced
    out = net.lookup("j", k, "nf2")               # j is k's only chain member in view 2
    assert not [a for a in out if isinstance(a, Decision)], "j is not synced: it waits"
    assert {s.dst for s in data_sends(out)} == {"a", "b"}
    assert all(isinstance(s.msg.body, SyncDone) and s.msg.epoch == 2 for s in data_sends(out))
    net.set_view("a", view2)
    net.set_view("b", view2)
    syncs = [f.body for s, d, f in net.data(body=Sync) if d == "j"]
    pushed = {e.key: e for body in syncs for e in body.entries}
    assert set(pushed) == mine
    assert all(e == SyncEntry(e.key, 1, "nf1", True) for e in pushed.values())
    net.settle(3.0)

    assert j.synced and net.nodes["a"].synced and net.nodes["b"].synced
    assert net.decided("j") == [("j", k, "nf1")], "j answers the committed NF, not its proposal"
    assert all(synced for n, _, synced in net.decisions if n == "j")
    assert j.replica() == {x: "nf1" for x in mine}
    for name in ("a", "b"):
        assert net.nodes[name].replica() == {x: "nf1" for x in ks if view2.chain(x) == (name,)}
    assert all(n.uncommitted() == {} for n in net.nodes.values())


def test_future_epoch_frames_are_dropped_until_the_view_arrives():
    view1 = View(1, ("a", "b", "c"), 2)
    view2 = View(2, ("a", "b", "c"), 2)
    net = Net(view1)
    net.start()
    net.set_view("a", view2)
    net.set_view("c", view2)
    to_b = net.take(lambda s, d, f: d == "b")
    (from_a,) = [x for x in to_b if x[0] == "a"]
    (from_c,) = [x for x in to_b if x[0] == "c"]
    assert from_a[2].body == SyncDone() and from_a[2].epoch == 2
    assert net.receive(*from_a) == [], "b is at epoch 1: no ack, no action"
    net.run()
    net.set_view("b", view2)
    net.receive(*from_c)
    net.run()
    assert not net.nodes["b"].synced, "the dropped SyncDone from a is still missing"
    assert net.nodes["a"].synced and net.nodes["c"].synced
    net.flush()                                  # c acks a's SyncDone
    net.now += RTO
    out = net.tick("a")
    assert [(s.dst, s.msg.seq, s.msg.body) for s in data_sends(out)] == [
        ("b", from_a[2].seq, SyncDone())]
    net.run()
    assert net.nodes["b"].synced


def test_frames_from_a_node_outside_the_view_are_ignored():
    net, view = three()
    k = find_key(lambda k: view.chain(k)[-1] == "a")
    intruder = Frame("x", 1, 0, 1, 1, 0, Query(k, "nf9", 0))
    assert net.receive("x", "a", intruder) == []
    write = Frame("x", 1, 0, 1, 2, 0, Write(k, 5, "nf9"))
    assert net.receive("x", "a", write) == []
    sync = Frame("x", 1, 0, 1, 3, 0, Sync((SyncEntry(k, 7, "nf9", True),)))
    assert net.receive("x", "a", sync) == []
    for name in view.members:
        assert net.nodes[name].version(k) == 0 and net.nodes[name].replica() == {}
    # the legitimate path still works afterwards
    net.lookup("b", k, "nf1")
    net.run()
    assert net.decided() == [("b", k, "nf1")]


def test_frames_from_itself_are_ignored():
    net, view = three()
    k = find_key(lambda k: view.chain(k)[0] == "a")
    own = Frame("a", 1, 1, 1, 1, 0, Write(k, 1, "nf9"))
    assert net.receive("a", "a", own) == []
    assert net.nodes["a"].version(k) == 0


def test_pending_lookups_are_resent_to_the_new_tail():
    view1 = View(1, ("a", "b", "c"), 1)
    view2 = View(2, ("a", "b"), 1)
    net = Net(view1)
    net.start()
    k = find_key(lambda k: view1.chain(k) == ("c",) and view2.chain(k) == ("b",))
    net.down.add("c")                            # c fails: the query is lost
    net.lookup("a", k, "nf1")
    assert net.flight == []
    out = net.set_view("a", view2)
    assert ("b", Query(k, "nf1", 0, lookup=1)) in [(s.dst, s.msg.body) for s in data_sends(out)]
    net.set_view("b", view2)
    net.run()
    assert net.decided() == [("a", k, "nf1")]
    assert net.nodes["b"].replica() == {k: "nf1"}


def test_node_is_not_synced_until_syncdone_from_every_member():
    view = View(1, ("a", "b", "c"), 3)
    net = Net(view)
    for name in view.members:
        net.tick(name)
    k = find_key(lambda k: view.chain(k) == ("c", "b", "a"))
    # a hears no data yet, only the pure acks by which the nodes learn each other's
    # incarnation (the first frames, addressed to none, are refused and sent again)
    to_a = lambda s, d, f: d == "a" and f.body is not None
    net.run(drop=to_a)
    for name in view.members:
        net.tick(name)
    net.run(drop=to_a)
    assert net.nodes["b"].synced and net.nodes["c"].synced
    assert not net.nodes["a"].synced
    for name in ("b", "c"):                      # retransmissions on a's links, kept for later
        net.now += RTO
        net.tick(name)
    from_b = net.take(lambda s, d, f: s == "b" and d == "a")
    from_c = net.take(lambda s, d, f: s == "c" and d == "a")
    assert [f.body for _, _, f in from_b] == [SyncDone()]
    for fr in from_b:
        net.receive(*fr)
    assert not net.nodes["a"].synced, "SyncDone from b alone is not enough"

    net.lookup("b", k, "nf1")                    # a is k's tail, not synced: it defers
    (q,) = net.take(lambda s, d, f: isinstance(f.body, Query))
    (ins,) = net.take(lambda s, d, f: isinstance(f.body, InsertReq))
    out = net.receive(*q)
    assert data_sends(out) == [], "an unsynced tail neither answers nor inserts"
    for fr in from_c:
        out = net.receive(*fr)
    assert net.nodes["a"].synced
    assert data_sends(out) == [], "the asker's own insert request is on its way to the head"
    net.receive(*ins)
    net.run()
    assert net.decided() == [("b", k, "nf1")]


def test_write_in_flight_through_a_failed_middle_is_resent():
    view1 = View(1, ("a", "b", "c"), 3)
    net = Net(view1)
    net.start()
    k = KEYS[15]
    h, m, t = view1.chain(k)
    net.lookup(h, k, "nf1")
    net.run(stop=lambda s, d, f: s == m and isinstance(f.body, Write))
    net.down.add(m)                              # m crashes with the write
    net.flight.clear()
    assert net.nodes[h].uncommitted() == {k: 1}
    view2 = View(2, (h, t), 3)
    net.set_view(h, view2)
    pushed = [f.body for s, d, f in net.data(body=Sync) if s == h and d == t]
    assert SyncEntry(k, 1, "nf1", False) in {e for b in pushed for e in b.entries}
    net.set_view(t, view2)
    net.settle(3.0)
    assert net.decided() == [(h, k, "nf1")]
    for name in (h, t):
        assert net.nodes[name].replica() == {k: "nf1"} and net.nodes[name].uncommitted() == {}


@pytest.mark.parametrize("restart", [True, False])
def test_removed_node_named_again_by_a_later_view_works(restart):
    net, view1, ks = three_with_entries(KEYS[200:220])
    view2 = View(2, ("a", "b"), 2)
    for name in view1.members:
        net.set_view(name, view2)
    net.settle(2.0)
    view3 = View(3, ("a", "b", "c"), 2)
    if restart:                                  # a new process: a joining node
        net.add("c", view3)
        net.tick("c")
    for name in view3.members:
        net.set_view(name, view3)
    net.settle(3.0)
    assert {n: x.synced for n, x in net.nodes.items()} == {"a": True, "b": True, "c": True}
    k = find_key(lambda k: view3.chain(k)[-1] == "c", 300)
    net.lookup("a", k, "nf2")
    net.settle(2.0)
    assert ("a", k, "nf2") in net.decided()
    for k in ks:
        for name in view3.chain(k):
            assert net.nodes[name].replica().get(k) == "nf1", (name, k)


# ============================================================================ wire

class RecordingSim(Sim):
    def __post_init__(self):
        super().__post_init__()
        self.msgs = []

    def _apply(self, src, actions):
        self.msgs.extend(a.msg for a in actions if isinstance(a, Send))
        super()._apply(src, actions)


def test_every_message_of_a_multi_node_run_round_trips_through_the_wire():
    sim = RecordingSim(["n1", "n2", "n3", "n4"], 3, seed=7,
                       fault=Fault(loss=0.1, dup=0.1, max_delay=0.02, view_stagger=0.1))
    for i, k in enumerate(KEYS[:40]):
        sim.lookup(0.02 * i, f"n{i % 4 + 1}", k, f"nf{i % 3}")
        sim.lookup(0.02 * i + 0.001, f"n{(i + 1) % 4 + 1}", k, f"nf{(i + 1) % 3}")
    for k in KEYS[:10]:
        sim.delete(1.5, "n1", k)
    sim.crash(1.0, "n2")
    sim.join(2.0, "j1")
    sim.run(8.0)
    kinds = {kind(f) for f in sim.msgs}
    assert kinds == {"ack", "Query", "Answer", "InsertReq", "DeleteReq", "Write", "Ack", "Gone",
                     "Sync", "SyncDone"}, kinds
    for msg in set(sim.msgs):
        data = encode(msg, SECRET)
        assert len(data) <= 1500
        assert decode(data, SECRET) == msg


def test_retransmissions_back_off_and_come_in_bounded_bursts():
    from agents.chain import MAX_RTO, RETRANSMIT_BURST
    view = View(1, ("a", "b"), 2)
    a = ChainNode("a", view, rto=0.2)
    keys = [bytes([9, i]) + b"z" * 11 for i in range(100)]
    for k in keys:                                    # b never answers: frames pile up
        a.lookup(k, "nf1", 0.0)
    now, sends_at = 0.0, []
    while now < 12.0:
        now = round(now + 0.05, 2)
        sent = [x for x in a.tick(now) if isinstance(x, Send)]
        assert len(sent) <= RETRANSMIT_BURST
        if sent:
            sends_at.append(now)
    gaps = [round(t2 - t1, 2) for t1, t2 in zip(sends_at, sends_at[1:])]
    for gap, timeout in zip(gaps, [0.4, 0.8, MAX_RTO, MAX_RTO]):   # doubling, capped
        assert timeout <= gap <= timeout + 0.1, gaps
    assert max(gaps) <= MAX_RTO + 0.1


# ==================================================== the adversary's classes (regressions)

@pytest.mark.parametrize("where", ["insert request held", "write held"])
def test_an_insert_of_an_nf_that_failed_meanwhile_is_not_kept(where):
    """Issue class 2 (L=3): a lookup proposes f0; before its insert commits, a view marks f0
    failed and every node purges it. The head refuses the stale proposal, or the tail deletes
    the entry it committed after its purge; no decision names f0, none stays in the table,
    and the lookup is decided with the proposal its agent makes again."""
    net, view = three()
    k = KEYS[40]
    h, m, t = view.chain(k)
    net.lookup(m, k, "f0")
    if where == "insert request held":
        held = net.take(lambda s, d, f: isinstance(f.body, InsertReq))
    else:
        net.run(stop=lambda s, d, f: isinstance(f.body, Write) and d == t)
        held = net.take(lambda s, d, f: isinstance(f.body, Write) and d == t)
    assert held
    for name in view.members:
        net.purge(name, "f0")
    net.lookup(m, k, "nf1")                  # the agent proposes again (Datapath.view)
    for frame in held:
        net.receive(*frame)
    net.settle(4.0)
    assert [nf for _, _, nf in net.decided()] == ["nf1"]
    for name in view.members:
        assert "f0" not in net.nodes[name].replica().values(), name
        assert net.nodes[name].replica() == {k: "nf1"}, name


def test_a_stale_answer_after_a_delete_is_not_cached():
    """Issue class 3 (L=2): c asks for k (its InsertReq reaches the head a, which holds k ->
    nf1), a deletes k, the tail's Gone reaches c, and c's retried lookup inserts nf2. An
    answer of the deleted version must not be what c decides or caches."""
    view = View(1, ("a", "b", "c"), 2)
    net = Net(view)
    net.start()
    k = find_key(lambda k: view.chain(k) == ("a", "b"))
    net.lookup("a", k, "nf1")
    net.run()
    net.flush()
    net.lookup("c", k, "nf2")
    net.take(lambda s, d, f: s == "c" and isinstance(f.body, Query))     # lost (resent later)
    (ins,) = net.take(lambda s, d, f: s == "c" and isinstance(f.body, InsertReq))
    net.receive(*ins)
    stale = net.take(lambda s, d, f: s == "a" and d == "c")              # held back
    net.delete("a", k)
    while not any(s == "c" and isinstance(f.body, InsertReq) for s, d, f in net.flight):
        net.receive(*net.flight.pop(0))                                   # until c re-asks
    for frame in stale:
        net.receive(*frame)
    net.settle(3.0)
    assert [nf for n, _, nf in net.decided() if n == "c"] == ["nf2"]
    assert net.nodes["c"].cache[k] == (3, "nf2")
    assert net.nodes["b"].replica() == {k: "nf2"}


def test_an_uncommitted_tombstone_past_its_ttl_does_not_stick_the_key():
    """Issue 16, item 3: the acks of a delete are held back longer than the tombstone TTL;
    the other nodes expire their committed tombstones, the head's stays uncommitted. A new
    lookup's insert (base 0) must not be ignored for good: the head hands the tail its
    tombstone, and the key is inserted anew."""
    view = View(1, ("a", "b", "c"), 3)
    net = Net(view, tombstone_ttl=2.0)
    net.start()
    k = KEYS[41]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1")
    net.run()
    net.flush()
    net.delete(m, k)
    for _ in range(40):                      # 4 s: every ack to the head is lost
        net.now = round(net.now + 0.1, 6)
        for name in view.members:
            net.tick(name)
        net.run(drop=lambda s, d, f: d == h and isinstance(f.body, Ack))
    assert net.nodes[t].version(k) == 0 and net.nodes[m].version(k) == 0, "expired there"
    assert net.nodes[h].version(k) == 2
    net.lookup(t, k, "nf2")
    net.settle(5.0)
    assert [nf for n, _, nf in net.decided() if n == t] == ["nf2"]
    for name in view.members:
        assert net.nodes[name].replica() == {k: "nf2"}, name


# ======================================================== the adversary's later classes

def two_of_three(view: View, k: bytes) -> tuple[str, str, str]:
    """Head, tail and the node outside the key's chain of 2."""
    h, t = view.chain(k)
    (o,) = [m for m in view.members if m not in (h, t)]
    return h, t, o


def deleted_by_head(k: bytes, **kw) -> tuple[Net, View, bytes, tuple[str, str, str]]:
    """Nodes a, b, c, L=2: the node outside k's chain inserts nf1, then the head deletes k."""
    view = View(1, ("a", "b", "c"), 2)
    net = Net(view, **kw)
    net.start()
    h, t, o = two_of_three(view, k)
    net.lookup(o, k, "nf1")
    net.run()
    net.delete(h, k)
    return net, view, k, (h, t, o)


def test_only_the_tail_tells_an_asker_of_a_deletion():
    """Explorer class A' (split): the tail forwards an outside asker's packet to nf1 and answers
    it released; the head then deletes the key. The asker's late InsertReq reaches the head:
    a Gone from there would overtake the tail's answer (another link), the asker would insert
    nf2 anew and send the rest of its connection there. The head stays silent; the asker
    decides nf1, released, and learns of the deletion from the tail, after its answer."""
    view = View(1, ("a", "b", "c"), 2)
    net = Net(view)
    net.start()
    k = KEYS[7]
    h, t, o = two_of_three(view, k)
    net.lookup(h, k, "nf1", b"SYN-h")
    net.lookup(o, k, "nf2", b"SYN-o")
    (query,) = net.take(lambda s, d, f: s == o and isinstance(f.body, Query))
    (insert,) = net.take(lambda s, d, f: s == o and isinstance(f.body, InsertReq))
    net.receive(*query)                          # the tail waits for h's write
    net.run()                                    # commits nf1: both packets forwarded
    assert sorted(f.packet for _, f in net.forwards) == [b"SYN-h", b"SYN-o"]
    late = net.take(lambda s, d, f: d == o)      # the tail's answer to o is slow
    net.delete(h, k)
    assert data_sends(net.receive(*insert)) == [], "the head sends the asker nothing"
    net.run(drop=lambda s, d, f: d == o)         # the tombstone commits (o hears later)
    for frame in late:
        net.receive(*frame)
    net.settle(3.0)
    assert [d for n, d, _ in net.decisions if n == o] == [Decision(k, "nf1", True)]
    assert len(net.forwards) == 2 and all(f.nf == "nf1" for _, f in net.forwards)
    assert k not in net.nodes[o].cache, "the tail's Gone followed its answer"


def tail_moves_on_join() -> tuple[Net, View, bytes, tuple[str, str, str]]:
    """Nodes a, b, c (L=2) and a joiner j, not yet told: a key whose chain (h, t) becomes
    (h, j) in view 2 (the tail moves), and o, the node outside it."""
    view1 = View(1, ("a", "b", "c"), 2)
    view2 = View(2, ("a", "b", "c", "j"), 2)
    k = find_key(lambda k: view2.chain(k) == (view1.chain(k)[0], "j"))
    net = Net(view1)
    net.start()
    nodes = two_of_three(view1, k)
    net.add("j", view2)
    return net, view2, k, nodes


def test_a_released_answer_in_flight_when_the_tail_moves_is_waited_for():
    """Explorer class D: the tail forwards the head asker's packet and answers released; a
    join moves the tail before that answer arrives. The new tail's answer (it forwarded
    nothing) must not make the asker send the packet again: the asker holds it until the old
    tail, still a member, has spoken (its answer, or its SyncDone of the new epoch)."""
    net, view2, k, (h, t, o) = tail_moves_on_join()
    net.lookup(h, k, "nf1", b"SYN")
    net.run(stop=lambda s, d, f: isinstance(f.body, Answer))
    assert net.forwards == [(t, Forward(k, "nf1", b"SYN"))]
    (answer,) = net.take(lambda s, d, f: isinstance(f.body, Answer))   # slow, not lost
    for name in ("j", h, t, o):
        net.set_view(name, view2)
    net.run()
    assert net.decided(h) == [], "the new tail's answer waits for the old tail's"
    assert any(isinstance(f.body, Answer) and s == "j" for s, d, f in net.data(0))
    net.receive(*answer)
    net.settle(3.0)
    assert [d for n, d, _ in net.decisions if n == h] == [Decision(k, "nf1", True)]
    assert len(net.forwards) == 1


def test_a_held_answer_is_decided_once_the_old_tail_has_spoken():
    """The same race, but the old tail gets the asker's query (and its packet) only after it
    adopted the new view, so it drops it and never forwards: its SyncDone of the new epoch
    settles the asker, which then decides the held answer and sends the packet itself."""
    view1 = View(1, ("a", "b", "c"), 2)
    view2 = View(2, ("a", "b", "c", "j"), 2)
    k = find_key(lambda k: view1.chain(k)[0] != view1.chain(k)[-1]
                 and view2.chain(k) == (view1.chain(k)[0], "j"), 50)
    net = Net(view1)
    net.start()
    h, t, o = two_of_three(view1, k)
    net.add("j", view2)
    net.lookup(o, k, "nf2", b"SYN")              # o's query (with the packet) to the tail t
    (query,) = net.take(lambda s, d, f: s == o and isinstance(f.body, Query))
    net.run()                                    # h writes nf2 at t
    for name in ("j", h, t, o):
        net.set_view(name, view2)
    net.receive(*query)                          # t is not the tail any more: dropped
    net.settle(3.0)
    assert net.forwards == []
    assert [d for n, d, _ in net.decisions if n == o] == [Decision(k, "nf2", False)]


def released_then_deleted(net, view2, k, nodes, nf: str):
    """The tail t forwards o's packet to ``nf`` and answers released; that answer is held
    back (returned), the view moves the tail to j, and the head deletes the key."""
    h, t, o = nodes
    net.run(stop=lambda s, d, f: isinstance(f.body, Answer) and d == o)
    assert net.forwards == [(t, Forward(k, nf, b"SYN"))]
    (answer,) = net.take(lambda s, d, f: isinstance(f.body, Answer) and d == o)  # slow
    for name in ("j", h, t, o):
        net.set_view(name, view2)
    net.run()
    net.delete(h, k)
    net.run()
    return answer


def test_a_lookup_whose_packet_went_out_inserts_again_where_it_went():
    """Explorer class K: the tail forwards an asker's packet to nf1 (the committed entry) and
    its released answer is delayed; a join moves the tail, and the head deletes the key. Told
    of the deletion, the asker must not insert its own proposal nf2 (its first packet went to
    nf1): it asks without inserting until the old tail's answer says where the packet went,
    then inserts that NF, and decides it released."""
    net, view2, k, (h, t, o) = tail_moves_on_join()
    net.lookup(h, k, "nf1")
    (write,) = net.take(lambda s, d, f: isinstance(f.body, Write))
    net.lookup(o, k, "nf2", b"SYN")              # its query waits at the tail t
    net.run()
    net.receive(*write)                          # nf1 commits: t forwards o's packet there
    answer = released_then_deleted(net, view2, k, (h, t, o), "nf1")
    assert net.nodes["j"].version(k) == 2 and net.nodes["j"].replica().get(k) is None
    since = len(net.sent)
    net.now += RETRY
    net.tick(o)
    net.run()
    assert net.decided(o) == []
    assert not [f for s, d, f in net.data(since) if s == o and getattr(f.body, "nf", "")], \
        "no insert of the asker's own proposal while its packet's tail is silent"
    net.receive(*answer)
    net.settle(3.0)
    assert [d for n, d, _ in net.decisions if n == o] == [Decision(k, "nf1", True)]
    assert net.nodes["j"].replica().get(k) == "nf1", "the connection stays at nf1"
    assert len(net.forwards) == 1


def test_a_first_packet_that_went_under_a_deleted_entry_follows_the_table():
    """Explorer class M: the tail forwards the asker's packet to nf2 (v1) and its released
    answer is delayed; a join moves the tail; the key is deleted and another node inserts
    nf3 before the answer arrives. The asker must not decide 'nf3 released' (its first packet
    is at nf2: split): it decides nf3 unreleased, and its agent sends the packet there."""
    net, view2, k, (h, t, o) = tail_moves_on_join()
    net.lookup(o, k, "nf2", b"SYN")
    answer = released_then_deleted(net, view2, k, (h, t, o), "nf2")
    net.lookup(t, k, "nf3")                      # another connection's node inserts anew
    net.run()
    assert net.nodes["j"].replica().get(k) == "nf3" and net.decided(o) == []
    net.receive(*answer)
    net.settle(3.0)
    assert [d for n, d, _ in net.decisions if n == o] == [Decision(k, "nf3", False)]
    assert net.nodes["j"].replica().get(k) == "nf3" and len(net.forwards) == 1


def test_an_answer_to_an_earlier_lookup_is_not_taken_for_a_new_one():
    """Issue 16 item 2: an answer that released the packet of an earlier lookup of the key must
    not make a new lookup's decision say released (the agent would drop its first packet);
    and an earlier lookup's plain answer must not decide a lookup whose packet rode to a tail
    that may forward it."""
    net, view = three()
    k = KEYS[3]
    h, m, t = view.chain(k)
    net.lookup(m, k, "nf1", b"SYN-1")
    net.run(stop=lambda s, d, f: isinstance(f.body, Answer) and d == m)
    (first,) = net.take(lambda s, d, f: isinstance(f.body, Answer) and d == m)
    assert first[2].body.released and first[2].body.lookup == 1
    # the earlier lookup is over (as after a second answer to a retried query, a cache hit and
    # a delete); no public event ends a lookup without its answer, so it is dropped here
    net.nodes[m]._pending.clear()
    net.lookup(m, k, "nf1", b"SYN-2")            # lookup 2: its packet rides to the tail
    net.receive(*first)
    assert net.decided(m) == [], "lookup 1's answer does not decide lookup 2"
    net.run()
    assert [d for n, d, _ in net.decisions if n == m] == [Decision(k, "nf1", False)], \
        "lookup 2's own answer: the tail had the entry committed and forwarded nothing"


def test_a_reinsert_tells_every_member_the_older_versions_are_gone():
    """Explorer class G: a deletion's Gone can be lost (its tail left the view) or never sent
    (the tombstone reached a new tail by Sync and a re-insert superseded it before it
    committed). The commit of a re-insert (version > 1) tells every member that the versions
    below it are deleted, so no cached answer of the old entry outlives it."""
    net, view, k, (h, t, o) = deleted_by_head(KEYS[11])
    net.run()
    mark = len(net.sent)
    net.lookup(h, k, "nf2")
    net.run()
    gones = sorted(d for s, d, f in net.data(mark, Gone) if s == t and f.body == Gone(k, 3))
    assert gones == sorted(m for m in view.members if m != t)   # (and itself, locally)


def test_versions_of_a_key_never_start_again_after_its_tombstones_expire():
    """Explorer class I: once every node expired a key's tombstone, a new insert must not reuse
    the versions of its earlier life (a frame of that life delayed past the TTL would be taken
    for the new one): the first version is above a floor that grows with time."""
    net, view, k, (h, t, o) = deleted_by_head(KEYS[13], tombstone_ttl=1.0)
    net.settle(3.0)
    assert all(n.version(k) == 0 for n in net.nodes.values()), "expired everywhere"
    net.lookup(o, k, "nf2")
    net.run()
    ver = net.nodes[t].version(k)
    assert ver > 1 << 20 and net.nodes[o].cache[k] == (ver, "nf2")
    for name in view.chain(k):
        assert net.nodes[name].replica() == {k: "nf2"} and net.nodes[name].version(k) == ver


# ============================================================== a node's lives (issue 16)

def test_a_node_admitted_again_keeps_nothing_of_its_old_life():
    """Issue 16 item 2: c caches k's answer, is removed without hearing of it, k is deleted
    and inserted anew meanwhile; c is admitted again (a later ``since``). Its old cache, store
    and links are gone: its next lookup asks the tail and gets the new entry."""
    view1 = View(1, ("a", "b", "c"), 2, since=(1, 1, 1))
    view2 = View(2, ("a", "b"), 2, since=(1, 1))
    view3 = View(3, ("a", "b", "c"), 2, since=(1, 1, 3))
    k = find_key(lambda k: "c" not in view1.chain(k) and view3.chain(k) == view1.chain(k))
    net = Net(view1)
    net.start()
    net.lookup("c", k, "nf1")
    net.run()
    assert net.nodes["c"].cache[k][1] == "nf1"
    old_inc = net.nodes["c"].inc
    net.down.add("c")                            # c hears nothing of view 2
    for name in ("a", "b"):
        net.set_view(name, view2)
    h, t = view2.chain(k)
    net.delete(h, k)
    net.settle(1.0)
    net.lookup(h, k, "nf2")
    net.settle(1.0)
    net.down.discard("c")
    for name in ("a", "b", "c"):
        net.set_view(name, view3)
    assert net.nodes["c"].inc > old_inc and k not in net.nodes["c"].cache
    net.settle(3.0)
    assert all(n.synced for n in net.nodes.values())
    net.lookup("c", k, "nf3")
    net.settle(1.0)
    assert net.decided("c")[-1] == ("c", k, "nf2")


def test_a_node_removed_without_being_told_decides_nothing_new():
    """Issue 16 item 4: c never gets the view that removed it. The members that have it drop
    its frames, so its lookups get no answer (only what it cached still decides), and it
    decides again once it is admitted anew."""
    view1 = View(1, ("a", "b", "c"), 2, since=(1, 1, 1))
    view2 = View(2, ("a", "b"), 2, since=(1, 1))
    net = Net(view1)
    net.start()
    for name in ("a", "b"):
        net.set_view(name, view2)
    net.run()
    k = KEYS[21]
    net.lookup("c", k, "nf1", b"SYN")
    net.settle(3.0)
    assert net.decided("c") == [] and net.forwards == []
    assert net.nodes["a"].stats["dropped_in"] + net.nodes["b"].stats["dropped_in"] > 0
    view3 = View(3, ("a", "b", "c"), 2, since=(1, 1, 3))
    for name in ("a", "b", "c"):
        net.set_view(name, view3)
    net.settle(3.0)
    assert [nf for n, _, nf in net.decided() if n == "c"] == ["nf1"]


# ============================================================================ patent variant
#
# ``View(..., variant="patent")``: keys on a consistent-hash ring of the members' names, and an
# asker's Query starts the insert at the tail (see agents/chain.py). Here the ring is rebuilt
# from its definition, and the frames of a new key are followed hop by hop.

def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=None)
def ring_points(members: tuple[str, ...]) -> list[tuple[int, str]]:
    """The ring: ``RING_VNODES`` points per member (the hash of ``name#i``), sorted."""
    return sorted((_h64(f"{m}#{i}".encode()), m) for m in members for i in range(RING_VNODES))


def ring_chain(members, chain_len: int, k: bytes) -> tuple[str, ...]:
    """The patent's placement, from its definition: the tail owns the first ring point at or
    after the key's blake2b-64 hash (wrapping around), the chain is the tail's L-1 distinct
    predecessors (head first), then the tail."""
    points = ring_points(tuple(members))
    h = _h64(k)
    i = bisect.bisect_left(points, (h, "")) % len(points)
    picked = [points[i][1]]
    j = i
    while len(picked) < min(chain_len, len(members)):
        j -= 1
        m = points[j % len(points)][1]
        if m not in picked:
            picked.append(m)
    return tuple(reversed(picked))


def patent(epoch, members, chain_len, **kw) -> View:
    return View(epoch, members, chain_len, variant="patent", **kw)


def test_view_variant_defaults_to_steered_and_unknown_variants_are_refused():
    assert VARIANTS[0] == "steered" and "patent" in VARIANTS
    assert View(1, ("a", "b"), 2).variant == "steered" and View(1, ("a", "b"), 2).steered
    assert not patent(1, ("a", "b"), 2).steered
    with pytest.raises(ValueError):
        View(1, ("a", "b"), 2, variant="ring")
    assert patent(1, ("a", "b"), 2) != View(1, ("a", "b"), 2)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("chain_len", [1, 2, 3, 4])
def test_patent_chain_is_the_tails_ring_predecessors(n, chain_len):
    """Tail: the owner of the key's successor point on the ring; head: the tail's L-1'th
    distinct predecessor; min(L, members) distinct nodes."""
    members = tuple(f"lb{i}" for i in range(1, n + 1))
    view = patent(1, members, chain_len)
    points = ring_points(members)
    assert len(points) == RING_VNODES * n
    wrapped = 0
    for k in KEYS[:1500]:
        c = view.chain(k)
        assert c == ring_chain(members, chain_len, k), k
        assert len(c) == min(chain_len, n) and len(set(c)) == len(c)
        h = _h64(k)
        succ = next((m for p, m in points if p >= h), None)     # (a linear scan, not bisect)
        assert c[-1] == (succ or points[0][1]), "the tail owns the key's successor point"
        wrapped += succ is None
    if n > 1:
        assert wrapped > 0, "no key hashed past the last ring point (the wrap-around untested)"


def test_patent_longer_chains_add_a_predecessor_in_front_of_the_same_tail():
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    views = {L: patent(1, members, L) for L in range(1, 6)}
    for k in KEYS[:500]:
        tail = views[1].chain(k)[-1]
        for L in range(1, 5):
            shorter, longer = views[L].chain(k), views[L + 1].chain(k)
            assert shorter[-1] == longer[-1] == tail
            assert longer[1:] == shorter, (L, shorter, longer)


def test_patent_placement_ignores_steering_and_member_order_and_balances_roles():
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    a = patent(1, members, 3)
    b = patent(7, tuple(reversed(members)), 3, steering=("lb2", "lb1", "", "lb5", "lb3", "lb4"))
    steered = View(1, members, 3)
    count = {m: {"head": 0, "middle": 0, "tail": 0} for m in members}
    differs = 0
    for k in KEYS[:2000]:
        assert a.chain(k) == b.chain(k)
        differs += a.chain(k) != steered.chain(k)
        h, mid, t = a.chain(k)
        count[h]["head"] += 1
        count[mid]["middle"] += 1
        count[t]["tail"] += 1
    assert differs > 1500, "the ring places keys unlike the steering hash"
    for m in members:
        for role, n in count[m].items():
            # 400 expected per role; with 16 points per member the shares spread widely
            # (lb4 owns about 7% of this ring, lb3 about 29%): a node never picked, or picked
            # for most keys, fails this
            assert 50 < n < 1000, (m, role, count[m])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_patent_removing_or_adding_a_member_moves_only_the_chains_it_is_in(L):
    """Consistent hashing: removing lb3 changes exactly the chains that held it (lb3 is
    replaced by one other member), and adding lb3 back changes exactly the chains that now
    hold it; a sixth member likewise moves only the chains it joins."""
    members = ("lb1", "lb2", "lb3", "lb4", "lb5")
    full = patent(1, members, L)
    less = patent(2, tuple(m for m in members if m != "lb3"), L)
    more = patent(3, members + ("lb6",), L)
    moved = grown = 0
    for k in KEYS[:3000]:
        old, new = full.chain(k), less.chain(k)
        if "lb3" in old:
            moved += 1
            assert "lb3" not in new and len(new) == len(old)
            assert set(old) - {"lb3"} <= set(new), (old, new)   # one member replaces it
        else:
            assert new == old, (k, old, new)
        # adding lb3 back (the same comparison the other way round): only chains holding it
        assert (full.chain(k) == new) == ("lb3" not in full.chain(k))
        bigger = more.chain(k)
        if "lb6" in bigger:
            grown += 1
            assert len(bigger) == len(old) and set(bigger) - {"lb6"} <= set(old), (old, bigger)
        else:
            assert bigger == old, (k, old, bigger)
    # about L/5 of the keys hold lb3, about L/6 take lb6 (16 points each: loose bounds)
    assert 0.5 * L / 5 < moved / 3000 < 1.6 * L / 5, moved
    assert 0.5 * L / 6 < grown / 3000 < 1.6 * L / 6, grown


def causal_hops(net: Net, limit: int = 10_000) -> dict:
    """Deliver the frames in flight one at a time (FIFO) and follow causality: a data frame
    sent while a node handles a frame is its child. Returns, for the first ``Forward`` and
    each ``Decision``, the chain of data frames (src, dst, kind) that led to it, in order."""
    parent: dict[int, tuple] = {}            # id(frame) -> path (src, dst, kind) to it
    for s, d, f in net.flight:
        if f.body is not None:
            parent[id(f)] = ((s, d, kind(f)),)
    out: dict = {"forward": None, "decisions": {}}
    for _ in range(limit):
        if not net.flight:
            return out
        s, d, f = net.flight.pop(0)
        path = parent.get(id(f), ())
        sent, forwards, decisions = len(net.sent), len(net.forwards), len(net.decisions)
        net.receive(s, d, f)
        for s2, d2, f2 in net.sent[sent:]:
            if f2.body is not None:
                parent[id(f2)] = path + ((s2, d2, kind(f2)),)
        if len(net.forwards) > forwards and out["forward"] is None:
            out["forward"] = (path, net.forwards[forwards][1])
        for n, dec, _ in net.decisions[decisions:]:
            out["decisions"].setdefault(n, (path, dec))
    raise AssertionError("the network did not go quiet")


def four(variant: str, k_pred=None) -> tuple[Net, View, bytes, tuple[str, str, str], str]:
    """Four nodes, L=3, a started network; a key, its chain (h, m, t), the node outside it."""
    view = View(1, ("a", "b", "c", "d"), 3, variant=variant)
    net = Net(view)
    net.start()
    k = find_key(k_pred or (lambda k: True))
    h, m, t = view.chain(k)
    (out,) = set(view.members) - {h, m, t}
    return net, view, k, (h, m, t), out


@pytest.mark.parametrize("who", ["outside", "head", "middle"])
def test_patent_lookup_queries_the_tail_which_inserts_through_the_head(who):
    """patent, a new key: Query (with the proposal and the first packet) to the tail, the
    tail's InsertReq to the head, Write down the chain, the tail commits, forwards the packet
    and answers the asker: L+1 hops before the packet leaves, whoever asks (but the tail)."""
    net, view, k, (h, m, t), outside = four("patent")
    asker = {"outside": outside, "head": h, "middle": m}[who]
    out = net.lookup(asker, k, "nf1", b"SYN")
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [
        (t, Query(k, "nf1", 0, b"SYN", 1))], "no write, no InsertReq from the asker"
    assert net.nodes[h].version(k) == 0
    hops = causal_hops(net)
    path, fwd = hops["forward"]
    assert fwd == Forward(k, "nf1", b"SYN")
    assert list(path) == [(asker, t, "Query"), (t, h, "InsertReq"), (h, m, "Write"),
                          (m, t, "Write")], path
    assert len(path) == view.chain_len + 1
    apath, decision = hops["decisions"][asker]
    assert decision == Decision(k, "nf1", True)
    assert list(apath) == list(path) + [(t, asker, "Answer")]
    assert [(n, d) for n, d, _ in net.decisions] == [(asker, Decision(k, "nf1", True))]
    assert net.forwards == [(t, fwd)], "the packet left once, from the tail"
    # the packet rode the Query only; the insert and the writes do not carry it
    assert [f.body for _, _, f in net.data(0, InsertReq)] == [InsertReq(k, "nf1", 0)]
    assert all(not f.body.packet for _, _, f in net.data(0, Write))
    assert [f.body for _, _, f in net.data(0, Answer)] == [Answer(k, 1, "nf1", True, 1)]
    net.settle(1.0)
    for name in (h, m, t):
        assert net.nodes[name].replica() == {k: "nf1"} and not net.nodes[name].uncommitted()
    assert [(s, d) for s, d, _ in net.data(0, Ack)] == [(t, m), (m, h)]


def test_patent_tail_asker_inserts_through_the_head_and_keeps_its_packet():
    """The tail as asker: no Query frame (it asks itself), InsertReq to the head, Write down
    the chain: L hops; its packet stays with it (no Forward, released=False)."""
    net, view, k, (h, m, t), _ = four("patent")
    out = net.lookup(t, k, "nf1", b"SYN")
    assert [(s.dst, s.msg.body) for s in data_sends(out)] == [(h, InsertReq(k, "nf1", 0))]
    hops = causal_hops(net)
    assert hops["forward"] is None and net.forwards == []
    path, decision = hops["decisions"][t]
    assert decision == Decision(k, "nf1", False)
    assert list(path) == [(t, h, "InsertReq"), (h, m, "Write"), (m, t, "Write")]
    assert len(path) == view.chain_len


@pytest.mark.parametrize("who,path", [
    # the head writes at once, its Write carries the packet: L-1 hops
    ("head", ["h>m Write", "m>t Write"]),
    # any other asker: InsertReq to the head in parallel with its Query to the tail: L hops
    ("outside", ["x>h InsertReq", "h>m Write", "m>t Write"]),
    ("middle", ["m>h InsertReq", "h>m Write", "m>t Write"]),
])
def test_steered_lookup_with_the_same_members_is_as_before(who, path):
    """The default variant on the same members: a head asker writes at once (L-1 hops before
    the packet leaves), another asker sends InsertReq to the head along with its Query."""
    net, view, k, (h, m, t), outside = four("steered")
    names = {"h": h, "m": m, "t": t, "x": outside}
    asker = {"outside": outside, "head": h, "middle": m}[who]
    out = net.lookup(asker, k, "nf1", b"SYN")
    if who == "head":
        assert [(s.dst, kind(s.msg)) for s in data_sends(out)] == [(m, "Write")]
    else:
        assert sorted((s.dst, kind(s.msg)) for s in data_sends(out)) == sorted(
            [(h, "InsertReq"), (t, "Query")])
    hops = causal_hops(net)
    got, fwd = hops["forward"]
    want = [(names[p[0]], names[p[2]], p.split()[1]) for p in path]
    assert list(got) == want and fwd == Forward(k, "nf1", b"SYN")
    assert len(got) == view.chain_len - (who == "head")
    assert [(n, d) for n, d, _ in net.decisions] == [(asker, Decision(k, "nf1", True))]


def test_patent_concurrent_askers_make_one_insert_at_the_tail():
    """Two askers of a new key: the tail starts one insert (the first query's proposal), one
    Write per hop; each asker's packet is forwarded once, to that NF."""
    net, view, k, (h, m, t), outside = four("patent")
    net.lookup(outside, k, "nf1", b"p1")
    net.lookup(h, k, "nf2", b"p2")
    net.settle(1.0)
    assert len(net.data(body=InsertReq)) == 1
    assert len(net.data(body=Write)) == view.chain_len - 1
    assert sorted(net.decided()) == sorted([(outside, k, "nf1"), (h, k, "nf1")])
    assert sorted(f.packet for _, f in net.forwards) == [b"p1", b"p2"]
    assert {f.nf for _, f in net.forwards} == {"nf1"}
    for name in (h, m, t):
        assert net.nodes[name].replica() == {k: "nf1"}


def test_patent_a_committed_entry_is_answered_by_the_tail_alone():
    """A known key: the tail answers the Query at once (no InsertReq, no Write), without
    forwarding (the asker sends its packet)."""
    net, view, k, (h, m, t), outside = four("patent")
    net.lookup(h, k, "nf1")
    net.settle(1.0)
    mark = len(net.sent)
    net.lookup(outside, k, "nf2", b"SYN")
    net.run()
    assert [(s, d, kind(f)) for s, d, f in net.data(mark)] == [(outside, t, "Query"),
                                                                (t, outside, "Answer")]
    assert [d for n, d, _ in net.decisions if n == outside] == [Decision(k, "nf1", False)]
    assert net.forwards == []


def test_patent_sim_runs_agree_and_settle():
    """The simulated network under the patent variant: loss, duplicates, a crash and a join;
    one NF per key, every lookup answered, chains replicated."""
    sim = Sim(["n1", "n2", "n3", "n4"], 3, seed=5, variant="patent",
              fault=Fault(loss=0.1, dup=0.1, max_delay=0.02, view_stagger=0.1))
    for i, k in enumerate(KEYS[:40]):
        sim.lookup(0.02 * i, f"n{i % 4 + 1}", k, f"nf{i % 3}")
        sim.lookup(0.02 * i + 0.001, f"n{(i + 1) % 4 + 1}", k, f"nf{(i + 1) % 3}")
    sim.crash(1.0, "n2")
    sim.join(2.0, "j1")
    sim.run(10.0)
    assert sim.view.variant == "patent"
    assert all(len(nfs) == 1 for nfs in sim.decided().values())
    answered = {(n, k) for _, n, k, _ in sim.decisions}
    assert all((n, k) in answered for _, n, k in sim.lookups if n in sim.live_nodes())
    for k, (nf,) in sim.decided().items():
        for m in sim.view.chain(k):
            assert sim.nodes[m].replica().get(k) == nf
