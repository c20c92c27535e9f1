"""Unit tests of the controller policy (pure logic, no switch)."""
import pytest
from hypothesis import given, settings, strategies as st

from agents.messages import LBInfo, NFInfo
from ryu_apps.policy import (AddHostRoute, DelHostRoute, Note, Policy, PolicyError, PushView,
                             EMPTY_SLOT_PORT, SetSteering, Target, UnknownName)


def mac(kind, i):
    return f"02:00:00:00:{kind:02x}:{i:02x}"


def config(n_lb=3, n_nf=2, **over):
    cfg = {
        "secret_file": "/run/chainlb/secret", "chain_len": 2, "mode": "chain",
        "heartbeat_timeout": 0.5,
        "nf_detect_timeout": 0,        # NF probes: tested on their own (below)
        "edge_ports": {"c1": {"mac": mac(1, 1), "port": 1}, "c2": {"mac": mac(1, 2), "port": 2},
                       "s1": {"mac": mac(2, 1), "port": 3}},
        "lbs": [{"name": f"lb{i}", "mac": mac(3, i), "port": 10 + i} for i in range(1, n_lb + 1)],
        "nfs": [{"name": f"nf{i}", "mac": mac(4, i), "port": 20 + i} for i in range(1, n_nf + 1)],
    }
    cfg.update(over)
    return cfg


def of(acts, kind):
    return [a for a in acts if isinstance(a, kind)]


def up_all(pol, now=0.0):
    """Every LB heartbeats the current epoch."""
    acts = []
    for name in list(pol.lbs):
        acts += pol.heartbeat(name, pol.epoch, 0, now)
    return acts


@pytest.fixture
def pol():
    return Policy.from_config(config(), now=0.0)


# --- configuration ---------------------------------------------------------------------

def test_from_config_builds_initial_view(pol):
    v = pol.view()
    assert v.epoch == 1 and v.chain_len == 2 and v.mode == "chain"
    assert v.lbs == tuple(LBInfo(f"lb{i}", mac(3, i), "", 10 + i, i, 1) for i in (1, 2, 3))
    assert v.nfs == (NFInfo("nf1", mac(4, 1), "active"), NFInfo("nf2", mac(4, 2), "active"))


def test_start_installs_routes_steering_and_pushes_view(pol):
    acts = pol.start(now=0.0)
    routes = {(a.mac, a.port) for a in of(acts, AddHostRoute)}
    assert routes == {(mac(1, 1), 1), (mac(1, 2), 2), (mac(2, 1), 3),
                      (mac(3, 1), 11), (mac(3, 2), 12), (mac(3, 3), 13),
                      (mac(4, 1), 21), (mac(4, 2), 22)}
    # nobody is up yet: steering is installed empty (drop) until the agents report in
    assert of(acts, SetSteering) == [SetSteering((1, 2, 3), ())]
    [push] = of(acts, PushView)
    assert push.lb_names == ("lb1", "lb2", "lb3")
    assert push.targets[0] == Target("lb1", mac(3, 1), 11)
    assert push.view == pol.view()


def test_start_again_repeats_everything(pol):
    first = pol.start(0.0)
    assert pol.start(0.1) == first


@pytest.mark.parametrize("over, words", [
    ({"chain_len": 0}, "chain_len"),
    ({"chain_len": "3"}, "chain_len"),
    ({"mode": "rr"}, "chain, maglev, local, hash"),
    ({"heartbeat_timeout": -1}, "heartbeat_timeout"),
    ({"lbs": []}, "no LB"),
    ({"lbs": "lb1"}, "'lbs' must be a list"),
    ({"nfs": [{"name": "nf1", "mac": mac(4, 1)}]}, "nfs[0]"),
    ({"nfs": [{"name": "nf1", "mac": "zz", "port": 5}]}, "bad MAC"),
    ({"edge_ports": {"c1": {"mac": mac(3, 1), "port": 1}}}, "already used by"),
    ({"colour": 1}, "unknown config keys"),
])
def test_bad_config_is_refused_clearly(over, words):
    with pytest.raises(PolicyError, match=None) as e:
        Policy.from_config(config(**over), now=0.0)
    assert words in str(e.value)


def test_missing_chain_len():
    cfg = config()
    del cfg["chain_len"]
    with pytest.raises(PolicyError, match="chain_len"):
        Policy.from_config(cfg, 0.0)


# --- NF pool ---------------------------------------------------------------------------

def test_add_nf_bumps_epoch_routes_and_pushes(pol):
    acts = pol.add_nf("nf3", mac(4, 3).upper(), 23, now=1.0)
    assert pol.epoch == 2
    assert acts[0] == AddHostRoute(mac(4, 3), 23)  # MAC normalised to lower case
    [push] = of(acts, PushView)
    assert push.lb_names == ("lb1", "lb2", "lb3")
    assert push.view.epoch == 2
    assert NFInfo("nf3", mac(4, 3), "active") in push.view.nfs


def test_drain_then_remove_nf(pol):
    pol.drain_nf("nf1", 1.0)
    assert pol.epoch == 2 and pol.nfs["nf1"].state == "draining"
    with pytest.raises(PolicyError, match="only an active NF"):
        pol.drain_nf("nf1", 1.0)
    acts = pol.remove_nf("nf1", 2.0)
    assert pol.epoch == 3
    # a removed NF stays listed as failed so that agents purge its entries
    assert NFInfo("nf1", mac(4, 1), "failed") in acts[-1].view.nfs
    with pytest.raises(PolicyError, match="already removed"):
        pol.remove_nf("nf1", 3.0)
    assert pol.epoch == 3


@pytest.mark.parametrize("args, err, words", [
    (("nf1", mac(4, 9), 29), PolicyError, "name nf1 is already in use"),
    (("nf9", mac(4, 1), 29), PolicyError, "MAC 02:00:00:00:04:01 is already used by nf1"),
    (("nf9", mac(4, 9), 11), PolicyError, "port 11 is already used by lb1"),
    (("nf9", "01:00:5e:00:00:01", 29), PolicyError, "multicast"),
    (("nf9", "02:00:00:00:ff:01", 29), PolicyError, "reserved"),
    (("nf9", "02:00:00:00:04", 29), PolicyError, "bad MAC"),
    (("nf9", mac(4, 9), 0), PolicyError, "bad switch port"),
    (("nf9", mac(4, 9), True), PolicyError, "bad switch port"),
    (("nf9", mac(4, 9), "29"), PolicyError, "bad switch port"),
    (("nf9", mac(4, 9), EMPTY_SLOT_PORT), PolicyError, "reserved"),
    (("", mac(4, 9), 29), PolicyError, "bad NF name"),
    (("nf 9", mac(4, 9), 29), PolicyError, "bad NF name"),
    ((None, mac(4, 9), 29), PolicyError, "bad NF name"),
])
def test_add_nf_bad_input(pol, args, err, words):
    with pytest.raises(err) as e:
        pol.add_nf(*args, now=1.0)
    assert words in str(e.value)
    assert pol.epoch == 1 and set(pol.nfs) == {"nf1", "nf2"}


def test_unknown_nf_names_the_members(pol):
    with pytest.raises(UnknownName, match="no NF named 'nf7'; NFs: nf1, nf2"):
        pol.drain_nf("nf7", 1.0)
    with pytest.raises(UnknownName):
        pol.remove_nf("nf7", 1.0)


# --- LB members ------------------------------------------------------------------------

def test_lb_becomes_up_on_heartbeat_at_its_epoch_and_is_steered(pol):
    pol.start(0.0)
    acts = pol.heartbeat("lb2", 0, 0, 0.1)  # has no view yet: re-pushed, not steered
    assert of(acts, SetSteering) == []
    assert of(acts, PushView) == [PushView((Target("lb2", mac(3, 2), 12),), pol.view())]
    acts = pol.heartbeat("lb2", 1, 0, 0.2)
    # lb1's slot comes first: held for it, with a port the switch does not have, while it is
    # not up, so the gateway's hash keeps every node's place
    assert of(acts, SetSteering) == [SetSteering((1, 2, 3), (EMPTY_SLOT_PORT, 12))]
    assert pol.state(0.2)["steering"] == [None, 12]
    assert of(acts, PushView) == []
    acts = up_all(pol, 0.3)
    assert of(acts, SetSteering)[-1] == SetSteering((1, 2, 3), (11, 12, 13))
    assert pol.epoch == 1  # steering readiness is no membership change


def test_add_lb_joins_view_then_steering(pol):
    up_all(pol, 0.0)
    acts = pol.add_lb("lb4", mac(3, 4), 14, now=1.0)
    assert pol.epoch == 2
    assert acts[0] == AddHostRoute(mac(3, 4), 14)
    [push] = of(acts, PushView)
    assert push.lb_names == ("lb1", "lb2", "lb3", "lb4")
    assert of(acts, SetSteering) == []  # not serving before it reports the new epoch
    assert pol.heartbeat("lb4", 1, 0, 1.1)[-1].lb_names == ("lb4",)  # stale: re-pushed
    acts = pol.heartbeat("lb4", 2, 0, 1.2)
    assert of(acts, SetSteering) == [SetSteering((1, 2, 3), (11, 12, 13, 14))]


def test_remove_lb_tells_it_and_updates_steering(pol):
    up_all(pol, 0.0)
    acts = pol.remove_lb("lb2", now=1.0)
    assert pol.epoch == 2
    assert of(acts, SetSteering) == [SetSteering((1, 2, 3), (11, EMPTY_SLOT_PORT, 13))]
    [push] = of(acts, PushView)
    assert push.lb_names == ("lb1", "lb3", "lb2")  # the removed node learns it left
    assert [i.name for i in push.view.lbs] == ["lb1", "lb3"]
    assert acts[-1] == DelHostRoute(mac(3, 2))
    # its name, MAC and port are free again; a newcomer takes the free slot
    pol.add_lb("lb5", mac(3, 5), 15, now=2.0)
    pol.add_lb("lb2", mac(3, 2), 12, now=2.0)
    assert pol.epoch == 4
    assert {i.name: i.slot for i in pol.view().lbs} == {"lb1": 1, "lb5": 2, "lb3": 3, "lb2": 4}
    acts = pol.heartbeat("lb2", 4, 0, 2.1) + pol.heartbeat("lb5", 4, 0, 2.1)
    assert of(acts, SetSteering)[-1] == SetSteering((1, 2, 3), (11, 15, 13, 12))
    # the last slot emptied is dropped from the list
    acts = pol.remove_lb("lb2", now=3.0)
    assert of(acts, SetSteering) == [SetSteering((1, 2, 3), (11, 15, 13))]


def test_cannot_remove_last_lb():
    pol = Policy.from_config(config(n_lb=1), 0.0)
    with pytest.raises(PolicyError, match="last LB node"):
        pol.remove_lb("lb1", 1.0)
    with pytest.raises(UnknownName, match="members: lb1"):
        pol.remove_lb("lb9", 1.0)


def test_cluster_macs_travel_in_the_view(pol):
    cluster = "02:00:00:01:03:04"
    pol.add_lb("lb4", mac(3, 4), 14, now=1.0, cluster_mac=cluster.upper())
    infos = {i.name: i for i in pol.view().lbs}
    assert infos["lb4"] == LBInfo("lb4", mac(3, 4), cluster, 14, 4, 2)
    assert infos["lb1"].cluster_mac == ""          # a node without one uses the switch
    assert pol.state(1.0)["lbs"][-1]["cluster_mac"] == cluster
    cfg = config()
    cfg["lbs"][0]["cluster_mac"] = "02:00:00:01:03:01"
    assert Policy.from_config(cfg, 0.0).view().lbs[0].cluster_mac == "02:00:00:01:03:01"


@pytest.mark.parametrize("cluster_mac, message", [
    ("02:00:00:01:03", "bad MAC"),
    ("01:00:00:01:03:05", "multicast"),
    ("02:00:00:01:03:04", "already in use"),       # lb4's
    (mac(3, 5), "already in use"),                 # its own switch MAC
])
def test_add_lb_bad_cluster_mac_is_refused(pol, cluster_mac, message):
    pol.add_lb("lb4", mac(3, 4), 14, now=1.0, cluster_mac="02:00:00:01:03:04")
    with pytest.raises(PolicyError, match=message):
        pol.add_lb("lb5", mac(3, 5), 15, now=2.0, cluster_mac=cluster_mac)
    assert pol.epoch == 2 and "lb5" not in pol.lbs


def test_add_lb_bad_input_leaves_epoch(pol):
    with pytest.raises(PolicyError, match="already in use"):
        pol.add_lb("lb1", mac(3, 9), 19, 1.0)
    assert pol.epoch == 1 and len(pol.lbs) == 3


def test_heartbeat_from_stranger_is_refused(pol):
    with pytest.raises(UnknownName, match="not an LB member"):
        pol.heartbeat("lb9", 1, 0, 0.0)


def test_heartbeat_records_state_for_the_view(pol):
    pol.heartbeat("lb1", 1, 42, 0.2)
    st_ = pol.state(now=0.5)
    lb1 = st_["lbs"][0]
    assert lb1 == {"name": "lb1", "mac": mac(3, 1), "cluster_mac": "", "port": 11, "status": "up",
                   "admitted_epoch": 1, "reported_epoch": 1, "entries": 42,
                   "last_heartbeat_age": 0.3}
    assert st_["lbs"][1]["last_heartbeat_age"] is None
    assert st_["steering"] == [11]
    assert st_["nfs"][0] == {"name": "nf1", "mac": mac(4, 1), "port": 21, "state": "active",
                             "failed_age": None, "detected": False, "last_probe_ok_age": None,
                             "probes_sent": 0, "probes_back": 0, "probe_rtt_max_ms": 0.0}
    assert {e["name"] for e in st_["edges"]} == {"c1", "c2", "s1"}


# --- time ------------------------------------------------------------------------------

def test_nobody_is_timed_out_while_the_switch_is_away(pol):
    pol.start(0.0)
    up_all(pol, 0.0)
    pol.switch_lost()
    pol.tick(5.0)                          # no heartbeat could cross the switch meanwhile
    assert len(pol.lbs) == 3 and pol.epoch == 1
    pol.start(5.0)                         # back: every up member has a fresh timeout
    assert len(pol.lbs) == 3 and not of(pol.tick(5.4), Note)
    pol.heartbeat("lb1", 1, 0, 5.4)
    pol.tick(5.6)
    assert set(pol.lbs) == {"lb1"}


def test_silent_lb_is_removed_after_timeout(pol):
    pol.start(0.0)
    up_all(pol, 0.0)
    for t in (0.2, 0.4):
        pol.heartbeat("lb1", 1, 0, t)
        pol.heartbeat("lb3", 1, 0, t)
    assert of(pol.tick(0.5), SetSteering) == []  # lb2 silent exactly 0.5 s: still in
    acts = pol.tick(0.51)
    assert pol.epoch == 2 and "lb2" not in pol.lbs
    assert of(acts, SetSteering) == [SetSteering((1, 2, 3), (11, EMPTY_SLOT_PORT, 13))]
    assert any("lb2 removed" in a.text for a in of(acts, Note))
    [push] = [p for p in of(acts, PushView) if p.view.epoch == 2][:1]
    assert push.lb_names == ("lb1", "lb3")  # a dead node is not told
    assert DelHostRoute(mac(3, 2)) in acts


def test_joining_lb_has_longer_grace():
    pol = Policy.from_config(config(join_timeout=5.0), 0.0)
    pol.start(0.0)
    pol.heartbeat("lb1", 1, 0, 4.9)
    pol.heartbeat("lb2", 1, 0, 4.9)
    assert len(pol.lbs) == 3 and pol.epoch == 1
    pol.tick(4.95)
    assert len(pol.lbs) == 3
    pol.tick(5.01)
    assert set(pol.lbs) == {"lb1", "lb2"} and pol.epoch == 2


def test_last_lb_is_never_timed_out():
    pol = Policy.from_config(config(n_lb=2), 0.0)
    pol.start(0.0)
    up_all(pol, 0.0)
    pol.tick(10.0)
    assert len(pol.lbs) == 1 and pol.epoch == 2
    pol.tick(20.0)
    assert len(pol.lbs) == 1 and pol.epoch == 2


def test_periodic_repush(pol):
    pol.start(0.0)
    up_all(pol, 0.0)
    for t in (0.3, 0.6, 0.9):
        up_all(pol, t)
        assert of(pol.tick(t), PushView) == []
    up_all(pol, 1.0)
    [push] = of(pol.tick(1.0), PushView)
    assert push.lb_names == ("lb1", "lb2", "lb3") and push.view.epoch == 1
    up_all(pol, 1.5)
    assert of(pol.tick(1.5), PushView) == []
    # a change pushes at once and restarts the period
    pol.add_nf("nf3", mac(4, 3), 23, now=1.7)
    up_all(pol, 2.1)
    up_all(pol, 2.5)
    assert of(pol.tick(2.6), PushView) == []
    up_all(pol, 2.7)
    assert len(of(pol.tick(2.7), PushView)) == 1
    assert pol.epoch == 2


def test_lb_that_resumes_after_removal_is_a_stranger(pol):
    pol.start(0.0)
    up_all(pol, 0.0)
    pol.heartbeat("lb1", 1, 0, 1.0)
    pol.heartbeat("lb2", 1, 0, 1.0)
    pol.tick(1.0)
    assert "lb3" not in pol.lbs
    with pytest.raises(UnknownName):
        pol.heartbeat("lb3", 1, 0, 1.1)


# --- invariants under random operation sequences ---------------------------------------

ops = st.lists(st.tuples(
    st.sampled_from(["add_nf", "drain_nf", "remove_nf", "add_lb", "remove_lb", "hb", "tick"]),
    st.integers(1, 6), st.floats(0.0, 0.4)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_invariants_hold_for_any_sequence(seq):
    pol = Policy.from_config(config(), 0.0)
    now = 0.0
    for op, i, dt in seq:
        now += dt
        before = pol.epoch
        try:
            if op == "add_nf":
                acts = pol.add_nf(f"nf{i}", mac(4, i), 20 + i, now)
            elif op == "drain_nf":
                acts = pol.drain_nf(f"nf{i}", now)
            elif op == "remove_nf":
                acts = pol.remove_nf(f"nf{i}", now)
            elif op == "add_lb":
                acts = pol.add_lb(f"lb{i}", mac(3, i), 10 + i, now)
            elif op == "remove_lb":
                acts = pol.remove_lb(f"lb{i}", now)
            elif op == "hb":
                acts = pol.heartbeat(f"lb{i}", pol.epoch, i, now)
            else:
                acts = pol.tick(now)
        except PolicyError:
            assert pol.epoch == before  # refused requests change nothing
            continue
        if op in ("add_nf", "drain_nf", "remove_nf", "add_lb", "remove_lb"):
            assert pol.epoch == before + 1
            assert any(isinstance(a, PushView) and a.view.epoch == pol.epoch for a in acts)
        assert pol.epoch >= before
        assert pol.lbs, "the view never loses its last LB"
        ports = [m.port for m in pol.lbs.values()]
        steering = pol.steering_ports()
        assert set(steering) - {EMPTY_SLOT_PORT} <= set(ports)
        assert len(steering) - steering.count(EMPTY_SLOT_PORT) == len(set(steering) - {EMPTY_SLOT_PORT})
        slots = {i.slot for i in pol.view().lbs}
        assert len(slots) == len(pol.lbs) and 0 not in slots, "one slot per member"
        for i in pol.view().lbs:    # a member's slot lists its port exactly while it is up
            listed = steering[i.slot - 1] if i.slot <= len(steering) else EMPTY_SLOT_PORT
            assert listed == (i.port if pol.lbs[i.name].status == "up" else EMPTY_SLOT_PORT)
        for a in acts:
            if isinstance(a, PushView):
                assert a.view.epoch <= pol.epoch
        v = pol.view()
        assert len({x.name for x in v.lbs}) == len(v.lbs)
        assert len({x.name for x in v.nfs}) == len(v.nfs)
        every = [h.mac for h in pol._all_hosts()]
        assert len(set(every)) == len(every)


def test_agents_rank_lb_nodes_by_the_gateways_slots(pol):
    """What an agent makes of the view (agents.datapath.steering_slots) is the gateway's list."""
    from agents.datapath import steering_slots
    up_all(pol, 0.0)
    pol.remove_lb("lb2", now=1.0)
    pol.add_lb("lb4", mac(3, 4), 14, now=2.0)
    pol.remove_lb("lb3", now=3.0)
    for name in pol.lbs:
        pol.heartbeat(name, pol.epoch, 0, 3.1)
    slots = steering_slots(pol.view().lbs)
    assert slots == ("lb1", "lb4")
    assert tuple(pol.lbs[n].port for n in slots) == pol.steering_ports() == (11, 14)
    pol.add_lb("lb5", mac(3, 5), 15, now=4.0)    # joining: in the agents' slots, not steered yet
    assert steering_slots(pol.view().lbs) == ("lb1", "lb4", "lb5")
    assert pol.steering_ports() == (11, 14)
    # a view without slots (or with a clash) leaves the agents on name-seeded ranking
    infos = pol.view().lbs
    assert steering_slots(tuple(LBInfo(i.name, i.mac, i.cluster_mac, i.port) for i in infos)) == ()
    assert steering_slots(tuple(LBInfo(i.name, i.mac, i.cluster_mac, i.port, 1)
                                for i in infos)) == ()


def test_a_node_admitted_again_under_its_name_has_a_later_since(pol):
    """The view tells every agent that a re-admitted name is a new life (``LBInfo.since``),
    even one that never heard of the removal."""
    first = {i.name: i.since for i in pol.view().lbs}
    pol.remove_lb("lb3", 1.0)
    assert "lb3" not in {i.name for i in pol.view().lbs}
    pol.add_lb("lb3", mac(3, 3), 13, now=2.0)
    again = {i.name: i.since for i in pol.view().lbs}
    assert again["lb3"] > first["lb3"]
    assert again["lb1"] == first["lb1"] and again["lb2"] == first["lb2"]


# --- NF health probes ---------------------------------------------------------------------

from ryu_apps.policy import NF_DETECT_TIMEOUT, PROBE_INTERVAL, SendProbe  # noqa: E402


def probing(**over):
    pol = Policy.from_config(config(nf_detect_timeout=NF_DETECT_TIMEOUT, **over), now=0.0)
    pol.start(0.0)
    up_all(pol)
    return pol


def run_probes(pol, until, answers, t=0.0, step=PROBE_INTERVAL, delay=0.01):
    """Tick every ``step`` to ``until``; NF n returns a probe when ``answers(n, sent)``, after
    ``delay``. Returns (t, every action)."""
    acts, due = [], []
    while t < until - 1e-9:
        t = round(t + step, 6)
        for when, probe in [d for d in due if d[0] <= t]:
            due.remove((when, probe))
            pol.probe_reply(probe.nf, probe.seq, probe.port, when)
        up_all(pol, t)
        out = pol.tick(t)
        acts += out
        due += [(t + delay, p) for p in of(out, SendProbe) if answers(p.nf, t)]
    return t, acts


def test_no_probes_before_the_switch_connects():
    pol = Policy.from_config(config(nf_detect_timeout=NF_DETECT_TIMEOUT), now=0.0)
    assert not of(pol.tick(5.0), SendProbe)
    assert all(n.state == "active" for n in pol.nfs.values())


def test_every_nf_is_probed_every_interval_and_answering_ones_stay_active():
    pol = probing()
    _, acts = run_probes(pol, 10.0, lambda nf, t: True)
    sent = of(acts, SendProbe)
    assert {p.nf for p in sent} == {"nf1", "nf2"}
    expected = 10.0 / PROBE_INTERVAL
    assert 0.95 * expected <= sum(p.nf == "nf1" for p in sent) <= expected + 1
    assert len({p.seq for p in sent}) == len(sent)
    assert (sent[0].mac, sent[0].port) == (mac(4, 1), 21)
    assert all(n.state == "active" for n in pol.nfs.values()) and pol.epoch == 1


def test_probe_counts_and_the_slowest_return_are_in_the_state():
    pol = probing()
    # nf1 answers every probe after 10 ms, nf2 every other one after 40 ms
    due, t, nf2_probes = [], 0.0, 0
    for _ in range(20):
        t = round(t + PROBE_INTERVAL, 6)
        for when, p in [d for d in due if d[0] <= t]:
            due.remove((when, p))
            pol.probe_reply(p.nf, p.seq, p.port, when)
        up_all(pol, t)
        for p in of(pol.tick(t), SendProbe):
            if p.nf == "nf1":
                due.append((t + 0.01, p))
            else:
                nf2_probes += 1
                if nf2_probes % 2:
                    due.append((t + 0.04, p))
    nfs = {n["name"]: n for n in pol.state(t)["nfs"]}
    assert nfs["nf1"]["probes_sent"] == nfs["nf2"]["probes_sent"] >= 19
    assert nfs["nf1"]["probes_back"] >= nfs["nf1"]["probes_sent"] - 1
    assert abs(nfs["nf2"]["probes_back"] - nfs["nf2"]["probes_sent"] / 2) <= 1
    assert nfs["nf1"]["probe_rtt_max_ms"] == pytest.approx(10, abs=0.01)
    assert nfs["nf2"]["probe_rtt_max_ms"] == pytest.approx(40, abs=0.01)
    # a probe's reply that comes back from another port is not counted
    pol.probe_reply("nf1", 10 ** 9, 21, t)
    assert pol.state(t)["nfs"][0]["probes_back"] == nfs["nf1"]["probes_back"]


def test_an_nf_that_stops_forwarding_is_failed_within_the_bound():
    pol = probing()
    stop = 3.0
    t, acts = run_probes(pol, 6.0, lambda nf, t: nf != "nf2" or t < stop)
    nf2 = pol.nfs["nf2"]
    assert nf2.state == "failed" and nf2.detected and pol.nfs["nf1"].state == "active"
    # the last probe that came back was sent just before the stop, and the NF failed one
    # timeout later (to the next tick)
    assert stop - PROBE_INTERVAL <= nf2.last_ok < stop
    assert NF_DETECT_TIMEOUT < nf2.failed_at - nf2.last_ok <= NF_DETECT_TIMEOUT + PROBE_INTERVAL + 1e-6
    pushes = [a for a in acts if isinstance(a, PushView)
              and any(n.name == "nf2" and n.state == "failed" for n in a.view.nfs)]
    assert pushes and pushes[0].view.epoch == 2
    assert any("nf2 failed" in a.text for a in of(acts, Note))
    # a failed NF is not probed any more
    assert not [p for p in of(run_probes(pol, 7.0, lambda nf, t: True, t=t)[1], SendProbe)
                if p.nf == "nf2"]
    st_ = pol.state(7.0)["nfs"][1]
    assert st_["detected"] and st_["failed_age"] == pytest.approx(7.0 - nf2.failed_at)


def test_late_replies_within_the_timeout_never_fail_an_nf():
    pol = probing()
    run_probes(pol, 20.0, lambda nf, t: True, delay=NF_DETECT_TIMEOUT - 2 * PROBE_INTERVAL)
    assert all(n.state == "active" for n in pol.nfs.values())


def test_replies_of_another_port_or_nf_or_unknown_seq_do_not_count():
    pol = probing()
    t, acts = 0.0, []
    while t < 2.0:
        t = round(t + PROBE_INTERVAL, 6)
        for p in of(pol.tick(t), SendProbe):
            if p.nf == "nf2" and t > 0.3:
                pol.probe_reply("nf2", p.seq, 99, t)          # wrong port
                pol.probe_reply("nf1", p.seq, 21, t)          # another NF's probe
                pol.probe_reply("nf2", p.seq + 1000, 22, t)   # never sent
            else:
                pol.probe_reply(p.nf, p.seq, p.port, t)
    assert pol.nfs["nf2"].state == "failed" and pol.nfs["nf1"].state == "active"


def test_a_stall_of_the_controller_restarts_the_windows_instead_of_failing():
    pol = probing()
    t, _ = run_probes(pol, 1.0, lambda nf, t: True)
    pol.tick(t + 2.0)                    # nothing ticked for 2 s (replies may be queued)
    assert all(n.state == "active" for n in pol.nfs.values())
    run_probes(pol, t + 4.0, lambda nf, t: True, t=t + 2.0)
    assert all(n.state == "active" for n in pol.nfs.values())


def test_no_judgement_while_the_switch_is_disconnected():
    pol = probing()
    t, _ = run_probes(pol, 1.0, lambda nf, t: True)
    pol.switch_lost()
    _, acts = run_probes(pol, 5.0, lambda nf, t: False, t=t)
    assert not of(acts, SendProbe) and all(n.state == "active" for n in pol.nfs.values())
    pol.start(5.0)                       # reconnected: a fresh window, then judged again
    _, acts = run_probes(pol, 5.0 + NF_DETECT_TIMEOUT - PROBE_INTERVAL, lambda nf, t: False, t=5.0)
    assert all(n.state == "active" for n in pol.nfs.values())
    run_probes(pol, 7.0, lambda nf, t: False, t=5.0 + NF_DETECT_TIMEOUT - PROBE_INTERVAL)
    assert all(n.state == "failed" for n in pol.nfs.values())


def test_an_nf_added_later_is_probed_from_its_admission():
    pol = probing()
    t, _ = run_probes(pol, 2.0, lambda nf, t: True)
    pol.add_nf("nf3", mac(4, 3), 23, now=t)
    _, acts = run_probes(pol, t + 1.0, lambda nf, t: nf != "nf3" or t > 2.5, t=t)
    assert pol.nfs["nf3"].state == "active" and any(p.nf == "nf3" for p in of(acts, SendProbe))
    run_probes(pol, t + 2.0, lambda nf, t: nf != "nf3" or t < 3.2, t=t + 1.0)
    assert pol.nfs["nf3"].state == "failed"


def test_an_nf_that_never_answers_has_the_join_timeout():
    """An NF whose service is still starting when probing starts (the testbed starts the NFs
    after the switch connects) is not failed at once; one that never answers is, after
    join_timeout."""
    pol = probing(join_timeout=3.0)
    run_probes(pol, 2.9, lambda nf, t: nf == "nf1" or t > 1.5)
    assert all(n.state == "active" for n in pol.nfs.values()) and pol.nfs["nf2"].seen
    pol = probing(join_timeout=3.0)
    run_probes(pol, 3.2, lambda nf, t: nf == "nf1")
    assert pol.nfs["nf2"].state == "failed" and pol.nfs["nf1"].state == "active"


def test_detection_can_be_turned_off_and_bad_timeouts_are_refused():
    pol = Policy.from_config(config(nf_detect_timeout=0), now=0.0)
    pol.start(0.0)
    assert not of(pol.tick(1.0), SendProbe)
    with pytest.raises(PolicyError, match="nf_detect_timeout"):
        Policy.from_config(config(nf_detect_timeout=1.5 * PROBE_INTERVAL), now=0.0)
    with pytest.raises(PolicyError, match="probe_interval"):
        Policy.from_config(config(probe_interval=0), now=0.0)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.floats(0.02, 0.25), min_size=10, max_size=80),
       delays=st.lists(st.floats(0.0, 0.6), min_size=1, max_size=80),
       stop=st.one_of(st.none(), st.floats(0.0, 8.0)))
def test_probe_detection_is_exact(steps, delays, stop):
    """Whatever the tick spacing and reply delays: nf1 (whose probes sent before ``stop``
    return, each after its delay) is failed exactly when none of its probes sent in the last
    timeout has returned in a window with no stall; never while one has."""
    pol = probing(n_nf=1)
    t, due, returned, window, seen = 0.0, [], [], 0.0, False
    last_tick = 0.0
    for i, step in enumerate(steps):
        t = round(t + step, 6)
        for d in [d for d in due if d[0] <= t]:
            due.remove(d)
            when, p, sent = d
            pol.probe_reply(p.nf, p.seq, p.port, when)
            if sent >= t - 2 * NF_DETECT_TIMEOUT:       # (older ones the policy forgot)
                returned.append(sent)
                seen = True
        if t - last_tick >= 0.3:
            window = t
        last_tick = t
        was = pol.nfs["nf1"].state
        newest = max([s for s in returned], default=None)
        limit = NF_DETECT_TIMEOUT if seen else pol.join_timeout
        expect_fail = was != "failed" and t - max(window, newest if newest is not None
                                                  else window) > limit
        out = pol.tick(t)
        assert (pol.nfs["nf1"].state == "failed") == (was == "failed" or expect_fail)
        for p in of(out, SendProbe):
            if stop is None or t < stop:
                due.append((t + delays[i % len(delays)], p, t))


# --- durable state: snapshot and restore --------------------------------------------------

def test_a_restored_policy_resumes_above_the_saved_epoch_with_the_same_view():
    pol = probing(n_lb=3)
    pol.add_nf("nf3", mac(4, 3), 23, now=1.0)
    pol.drain_nf("nf1", now=1.0)
    pol.remove_lb("lb2", now=1.0)
    pol.add_lb("lb4", mac(3, 4), 14, now=1.0, cluster_mac=mac(5, 4))
    snap = pol.snapshot()
    import json
    snap = json.loads(json.dumps(snap))          # what the store writes and reads
    back = Policy.restore(snap, now=50.0, heartbeat_timeout=0.5)
    assert back.epoch == pol.epoch + 1
    v, w = pol.view(), back.view()
    assert (w.lbs, w.nfs, w.chain_len, w.mode) == (v.lbs, v.nfs, v.chain_len, v.mode)
    assert back.steering_ports() == pol.steering_ports()   # lb4 still joining: empty slot
    assert back.lbs["lb4"].status == "joining" and back.lbs["lb1"].status == "up"
    # the restored one pushes its view (a higher epoch: every agent takes it) on start
    acts = back.start(50.0)
    assert [p.view.epoch for p in of(acts, PushView)] == [pol.epoch + 1]
    # up members have a fresh heartbeat timeout, not one from before the crash
    assert not [n for n in of(back.tick(50.4), Note) if "removed" in n.text]
    # a second restart resumes above the first one's epoch again
    assert Policy.restore(back.snapshot(), now=60.0).epoch == pol.epoch + 2


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(version=9), "not a version 1"),
    (lambda s: s.update(epoch=0), "bad epoch"),
    (lambda s: s["lbs"][0].update(status="sleeping"), "bad status"),
    (lambda s: s["nfs"][0].update(state="asleep"), "bad state"),
    (lambda s: s.update(slots=["lb1"]), "slots"),
    (lambda s: s.pop("lbs"), "malformed"),
    (lambda s: s["lbs"][0].update(mac="nope"), "bad MAC"),
])
def test_a_bad_snapshot_is_refused_with_a_reason(change, message):
    snap = Policy.from_config(config(), now=0.0).snapshot()
    change(snap)
    with pytest.raises(PolicyError, match=message):
        Policy.restore(snap, now=0.0)
