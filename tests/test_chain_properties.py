"""Property tests of the chain engine over random schedules in the simulated network.

Each schedule mixes lookups (two nodes proposing different NFs for one key), deletes,
frame loss, duplication, reordering, a crash, a join and staggered view delivery. Every
property runs under each protocol variant (``agents.chain.VARIANTS``); the ``patent`` copies
run three quarters of ``EXAMPLES`` schedules (``VARIANT_EXAMPLES``: CI time; their paths are
the same code but for placement and the insert's start).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agents.chain import VARIANTS
from chainsim import Fault, Sim, rider

EXAMPLES = int(os.environ.get("CHAIN_PROPERTY_EXAMPLES", "1500"))
# schedules per variant: the default (steered) gets EXAMPLES, the others 3/4 of it (CI time)
VARIANT_EXAMPLES = {v: EXAMPLES if v == VARIANTS[0] else max(1, EXAMPLES * 3 // 4)
                    for v in VARIANTS}
NAMES = ["n1", "n2", "n3", "n4", "n5"]


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 5))
    members = NAMES[:n]
    chain_len = draw(st.integers(1, 4))
    # a crash needs a second replica of every entry to survive it (L >= 2 on >= 2 nodes)
    can_crash = n > 1 and chain_len > 1
    spec = {
        "members": members,
        "chain_len": chain_len,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "fault": Fault(loss=draw(st.sampled_from([0.0, 0.05, 0.2])),
                       dup=draw(st.sampled_from([0.0, 0.1])),
                       max_delay=draw(st.sampled_from([0.002, 0.02, 0.1])),
                       view_stagger=draw(st.sampled_from([0.0, 0.1, 0.5]))),
        "crash": draw(st.one_of(st.none(), st.tuples(st.sampled_from(members),
                                                     st.floats(0.0, 1.5)))) if can_crash else None,
        "join": draw(st.one_of(st.none(), st.floats(0.0, 1.5))),
        "keys": draw(st.integers(1, 12)),
        "deletes": draw(st.integers(0, 4)),
    }
    return spec


def _strict_prefix_check(sim: Sim) -> None:
    """A successor's history of a key is a prefix of its predecessor's (same epoch, synced)."""
    nodes = {m: sim.nodes[m] for m in sim.nodes if m not in sim.crashed}
    synced = [node for node in nodes.values() if node.synced and not node.removed]
    keys = set()
    for node in nodes.values():
        keys.update(node.store)
    for key in keys:
        # the chains the synced nodes see (nodes of one view see one: each is checked once)
        for chain in {node.view.chain(key) for node in synced}:
            for pred, succ in zip(chain, chain[1:]):
                p, s = nodes.get(pred), nodes.get(succ)
                if p is None or s is None:
                    continue
                if p.view.epoch != s.view.epoch or not (p.synced and s.synced):
                    continue
                assert s.version(key) <= p.version(key), (
                    f"t={sim.now:.3f} {succ} holds v{s.version(key)} of {key!r} ahead of "
                    f"its predecessor {pred} (v{p.version(key)})")


def run_schedule(spec, variant: str = VARIANTS[0]) -> Sim:
    sim = Sim(spec["members"], spec["chain_len"], seed=spec["seed"], fault=spec["fault"],
              variant=variant)
    sim.checks.append(_strict_prefix_check)
    rng = sim.rng
    keys = [bytes([6, i]) + b"k" * 11 for i in range(spec["keys"])]
    askers = []
    for i, key in enumerate(keys):
        t = rng.uniform(0.0, 2.0)
        a, b = rng.choice(spec["members"]), rng.choice(spec["members"])
        askers.append(a)
        sim.lookup(t, a, key, f"nf{i % 3}")
        sim.lookup(t + rng.uniform(0.0, 0.05), b, key, f"nf{(i + 1) % 3}")
    for i, key in enumerate(keys[:spec["deletes"]]):
        sim.delete(rng.uniform(2.5, 3.5), askers[i], key)
    if spec["crash"]:
        node, t = spec["crash"]
        sim.crash(t, node)
    if spec["join"] is not None:
        sim.join(spec["join"], "j1")
    sim.run(20.0)
    return sim


# A lossy link held a write, and then the sync of it, behind a lost frame until the sender
# failed; the new tail committed the synced copy, and its predecessor (the head) took the
# value only from the tail's Ack.
WRITE_AND_SYNC_LOST_WITH_THEIR_SENDER = {
    "members": ["n1", "n2"], "chain_len": 2, "seed": 3545,
    "fault": Fault(loss=0.2, dup=0.0, min_delay=0.0005, max_delay=0.1, view_stagger=0.0),
    "crash": ("n2", 1.5), "join": 1.0, "keys": 10, "deletes": 2}


def check_invariants(spec, variant: str) -> None:
    sim = run_schedule(spec, variant)

    # 1. at most one NF is ever decided per live key, across all nodes (a lookup still
    #    pending when its connection is deleted gets a fresh entry: a new generation)
    generations: dict[tuple[bytes, bool], set[str]] = {}
    for t, _, key, nf in sim.decisions:
        after_delete = key in sim.deleted and t >= sim.deleted[key]
        generations.setdefault((key, after_delete), set()).add(nf)
    #    and a first packet a tail forwards goes to the NF decided for its generation
    for t, _, key, nf, _ in sim.forwards:
        after_delete = key in sim.deleted and t >= sim.deleted[key]
        generations.setdefault((key, after_delete), set()).add(nf)
    for (key, after_delete), nfs in generations.items():
        assert len(nfs) == 1, f"{key!r} decided to {nfs} (after its delete: {after_delete})"

    # 1b. a decision that says its first packet was released was released, by a tail
    sent = {(packet, nf) for _, _, _, nf, packet in sim.forwards}
    lost = [(n, k, nf) for n, k, nf in sim.released if (rider(n, k), nf) not in sent]
    assert not lost, f"released but never forwarded: {lost[:5]}"

    # 2. every lookup at a surviving node is answered
    answered = {(node, key) for _, node, key, _ in sim.decisions}
    live = set(sim.live_nodes())
    missing = [(t, n, k) for t, n, k in sim.lookups if n in live and (n, k) not in answered]
    assert not missing, f"unanswered lookups: {missing[:5]}"

    # 3. after reconfiguration every committed entry is on every member of its current chain
    decided = sim.decided()
    for key, nfs in decided.items():
        if key in sim.deleted:
            if not any(t >= sim.deleted[key] for t, _, k, _ in sim.decisions if k == key):
                for m in sim.view.chain(key):
                    assert key not in sim.nodes[m].replica(), f"deleted {key!r} still on {m}"
            continue
        (nf,) = nfs
        for m in sim.view.chain(key):
            node = sim.nodes[m]
            assert node.replica().get(key) == nf, (
                f"{key!r}: {m} holds {node.store.get(key)}, expected {nf}; view {sim.view}")
    # and everything settles: all nodes synced, nothing left unacknowledged
    for m in sim.live_nodes():
        node = sim.nodes[m]
        assert node.synced and not node.uncommitted(), (m, node.uncommitted())
        assert node.live == sum(1 for r in node.store.values() if r.nf), m


def _invariants(variant: str):
    """The hypothesis test of ``check_invariants`` under ``variant`` (its own budget)."""
    @settings(max_examples=VARIANT_EXAMPLES[variant], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(schedules())
    @example(WRITE_AND_SYNC_LOST_WITH_THEIR_SENDER)
    def invariants(spec):
        check_invariants(spec, variant)
    return invariants


_INVARIANTS = {v: _invariants(v) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_chain_protocol_invariants(variant):
    """Agreement, released packets forwarded, liveness, replication after reconfiguration
    and settling (``check_invariants``), over random schedules (``schedules``)."""
    _INVARIANTS[variant]()
