"""Scenario definitions and flow plans (pure logic)."""
import pytest

from scenarios import registry
from topo.testbed import TestbedParams, initial_hosts


def test_every_scenario_has_valid_events_within_its_traffic():
    params = TestbedParams()
    hosts = set(initial_hosts(params))
    for s in registry.SCENARIOS.values():
        assert s.batches, s.name
        for e in s.events:
            assert e.action in registry.ACTIONS, (s.name, e)
            assert 0 < e.at_s < s.traffic_s, (s.name, e)
            if e.action in ("drain_nf", "remove_nf", "kill_nf", "kill_lb"):
                assert e.target in hosts, (s.name, e)


def test_flow_plan_is_seeded_and_unique_per_port():
    s = registry.get("scale-out")
    a = registry.plan_flows(s, TestbedParams(), seed=7)
    assert a == registry.plan_flows(s, TestbedParams(), seed=7)
    assert a != registry.plan_flows(s, TestbedParams(), seed=8)
    assert len(a) == sum(b.count for b in s.batches)
    assert len({f["server_port"] for f in a}) == len(a)
    assert len({f["client_port"] for f in a}) == len(a)
    assert [f["start_s"] for f in a] == sorted(f["start_s"] for f in a)
    assert {f["server"] for f in a} == {"s1", "s2"}


def test_scale_out_starts_flows_before_and_after_the_new_nf():
    s = registry.get("scale-out")
    (add,) = [e for e in s.events if e.action == "add_nf"]
    starts = [f["start_s"] for f in registry.plan_flows(s, TestbedParams(), 1)]
    assert any(t < add.at_s for t in starts) and any(t > add.at_s + 1 for t in starts)


def test_scale_in_removes_the_drained_nf_after_its_flows_end():
    s = registry.get("scale-in")
    drain = next(e for e in s.events if e.action == "drain_nf")
    remove = next(e for e in s.events if e.action == "remove_nf")
    assert drain.target == remove.target
    before = [b for b in s.batches if b.start_s < drain.at_s]
    assert max(b.start_s + b.spread_s + 0.2 + b.duration_s for b in before) < remove.at_s


def test_scaled_multiplies_times_and_keeps_order():
    s = registry.get("lb-failure-during-scale-out")
    half = s.scaled(0.5)
    assert [e.at_s for e in half.events] == [e.at_s / 2 for e in s.events]
    assert half.traffic_s < s.traffic_s
    with pytest.raises(ValueError, match="time scale"):
        s.scaled(0.0)


def test_unknown_scenario_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        registry.get("scale-sideways")
    assert "scale-out" in str(err.value) and "churn" in str(err.value)
