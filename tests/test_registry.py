"""Scenario definitions and flow plans (pure logic)."""
import pytest

from scenarios import registry
from scenarios.traffic import plan_flows
from topo.testbed import TestbedParams, hosts_of, initial_hosts


def test_every_scenario_has_valid_events_within_its_traffic():
    params = TestbedParams()
    hosts = set(initial_hosts(params))
    for s in registry.SCENARIOS.values():
        assert s.batches or s.apps or s.arrivals, s.name
        for e in s.events:
            assert e.action in registry.ACTIONS, (s.name, e)
            assert 0 < e.at_s < s.traffic_s, (s.name, e)
            if e.action in ("drain_nf", "remove_nf", "kill_nf", "kill_lb"):
                assert e.target in hosts, (s.name, e)


def _plan(s, seed):
    p = TestbedParams()
    return plan_flows(s.batches, hosts_of(p, "client"), hosts_of(p, "server"), seed)


def test_flow_plan_is_seeded_and_unique_per_port():
    s = registry.get("scale-out")
    a = _plan(s, 7)
    assert a == _plan(s, 7)
    assert a != _plan(s, 8)
    assert len(a) == sum(b.count for b in s.batches)
    assert len({f.server_port for f in a}) == len(a)
    assert len({f.client_port for f in a}) == len(a)
    assert [f.start_s for f in a] == sorted(f.start_s for f in a)
    assert {f.server for f in a} == {"s1", "s2"}
    rec = a[0].record()
    assert rec["client_ip"] == a[0].client_ip and rec["flow_id"] == a[0].flow_id


def test_paced_iperf3_writes_small_blocks():
    """iperf3 paces in whole writes: 50 a second, so 1 s intervals are not quantized."""
    from scenarios.traffic import Flow, iperf_block_bytes
    assert iperf_block_bytes(2.0) == 5000 and iperf_block_bytes(0.01) == 1024
    assert iperf_block_bytes(1000) == 128 * 1024 and iperf_block_bytes(0) is None
    assert iperf_block_bytes(2.0, "udp") is None
    cmd = Flow("f1", "c1", "s1", 5201, 20001, 0.0, 5.0, 2.0).iperf_command("x.json")
    assert cmd[cmd.index("-l") + 1] == "5000" and cmd[cmd.index("-b") + 1] == "2.0M"


def test_scale_out_starts_flows_before_and_after_the_new_nf():
    s = registry.get("scale-out")
    (add,) = [e for e in s.events if e.action == "add_nf"]
    starts = [f.start_s for f in _plan(s, 1)]
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
