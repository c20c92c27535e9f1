"""Which way chain frames go to each peer (agents.paths): pure logic."""
import pytest
from hypothesis import given, settings, strategies as st

from agents.paths import HELLO_EVERY, LOST_AFTER, Change, ClusterPaths


def run(paths, until, hears, t=0.0, step=0.02):
    """Tick every ``step``; each peer's hello arrives when ``hears(peer, t)``."""
    hellos, changes = [], []
    while t < until - 1e-9:
        t = round(t + step, 6)
        for peer in ("lb2", "lb3"):
            if hears(peer, t):
                changes += paths.heard(peer, t)
        h, c = paths.tick(t)
        hellos.append((t, h))
        changes += c
    return hellos, changes


def test_hellos_go_to_every_peer_on_the_cluster_network_every_interval():
    p = ClusterPaths()
    p.set_peers(["lb2", "lb3"], 0.0)
    hellos, changes = run(p, 2.0, lambda peer, t: True)
    sent = [t for t, h in hellos if h]
    assert all(h == ["lb2", "lb3"] for t, h in hellos if h)
    assert 18 <= len(sent) <= 21 and changes == []
    assert p.via_cluster("lb2") and p.via_cluster("lb3") and not p.via_cluster("lb9")


def test_a_silent_peer_is_reached_through_the_gateway_until_it_is_heard_again():
    p = ClusterPaths()
    p.set_peers(["lb2", "lb3"], 0.0)
    cut, heal = 1.0, 3.0
    _, changes = run(p, 5.0, lambda peer, t: peer == "lb3" or not cut <= t < heal)
    lost, back = changes
    assert (lost.peer, lost.cluster, back.peer, back.cluster) == ("lb2", False, "lb2", True)
    assert LOST_AFTER - 0.02 <= lost.at - cut <= LOST_AFTER + 0.03 and lost.silent_s > LOST_AFTER
    assert heal <= back.at < heal + 0.03
    assert p.via_cluster("lb2") and p.lost() == []


def test_a_new_peer_has_its_grace_and_a_peer_no_longer_listed_is_forgotten():
    p = ClusterPaths()
    p.set_peers(["lb2"], 0.0)
    run(p, 1.0, lambda peer, t: True)
    p.set_peers(["lb2", "lb3"], 1.0)            # lb3 joins at 1.0, never says hello
    _, changes = run(p, 1.0 + LOST_AFTER - 0.05, lambda peer, t: peer == "lb2", t=1.0)
    assert changes == [] and p.via_cluster("lb3")
    _, changes = run(p, 2.0, lambda peer, t: peer == "lb2", t=1.0 + LOST_AFTER - 0.05)
    assert [c.peer for c in changes] == ["lb3"] and not p.via_cluster("lb3")
    p.set_peers(["lb2"], 2.0)
    assert p.lost() == [] and p.heard("lb3", 2.1) == []


def test_bad_timings_are_refused():
    with pytest.raises(ValueError):
        ClusterPaths(hello_every=0.5, lost_after=0.5)


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(0.001, 1.2), min_size=1, max_size=40),
       step=st.floats(0.005, 0.1))
def test_the_path_follows_the_hellos(gaps, step):
    """With hellos at arbitrary times: after every tick, a peer is reached through the
    gateway exactly when its newest hello is more than LOST_AFTER old, and every switch is
    reported once, alternating."""
    p = ClusterPaths()
    p.set_peers(["lb2"], 0.0)
    arrivals, t = [], 0.0
    for g in gaps:
        t += g
        arrivals.append(round(t, 6))
    end, now, last, changes = arrivals[-1] + 1.0, 0.0, 0.0, []
    while now < end:
        now = round(now + step, 6)
        while arrivals and arrivals[0] <= now:
            last = arrivals.pop(0)
            changes += p.heard("lb2", last)
        changes += p.tick(now)[1]
        assert p.via_cluster("lb2") == (now - last <= LOST_AFTER)
    assert all(a.cluster != b.cluster for a, b in zip(changes, changes[1:]))
    assert not changes or changes[0].cluster is False
    assert all(isinstance(c, Change) for c in changes) and HELLO_EVERY < LOST_AFTER
