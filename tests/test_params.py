"""Run parameters from the command line (scenarios.params): sizes, seeds, modes, errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from scenarios import registry
from scenarios.params import (ParamError, apply, event_needs, parse_modes, parse_seeds,
                              parse_set, scale_flows, topology)


def test_parse_set_lowercases_keys_and_rejects_unknown_ones():
    assert parse_set(["LBS=6", "L=2", "flows=60"]) == {"lbs": "6", "l": "2", "flows": "60"}
    with pytest.raises(ParamError, match="unknown parameter 'foo'.*valid: lbs"):
        parse_set(["foo=1"])
    with pytest.raises(ParamError, match="key=value"):
        parse_set(["lbs"])
    with pytest.raises(ParamError, match="key=value"):
        parse_set(["lbs="])


@pytest.mark.parametrize("text, seeds", [("1-5", [1, 2, 3, 4, 5]), ("1,2,5", [1, 2, 5]),
                                         ("3", [3]), ("1-3,7,2", [1, 2, 3, 7]),
                                         (" 4 , 6-7", [4, 6, 7])])
def test_seeds_are_lists_ranges_or_both(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, message", [("5-1", "backwards"), ("a", "numbers, ranges"),
                                           ("1-", "numbers, ranges"), ("", "numbers, ranges"),
                                           ("0-5000", "at most")])
def test_bad_seeds_say_what_is_allowed(text, message):
    with pytest.raises(ParamError, match=message):
        parse_seeds(text)


def test_modes_one_a_list_or_all():
    assert parse_modes("chain") == ["chain"]
    assert parse_modes("chain,maglev,chain") == ["chain", "maglev"]
    assert set(parse_modes("all")) == {"chain", "maglev", "local", "hash"}
    with pytest.raises(ParamError, match="unknown mode.*bogus.*valid modes"):
        parse_modes("chain,bogus")


def test_topology_keys_size_the_testbed_and_land_in_the_scenario():
    s, p = apply(registry.get("scale-out"), parse_set(["lbs=6", "nfs=4", "L=2", "clients=5",
                                                      "servers=3"]))
    assert (p.lbs, p.nfs, p.chain_len, p.clients, p.servers) == (6, 4, 2, 5, 3)
    assert s.params["lbs"] == 6 and s.params["chain_len"] == 2


def test_the_variant_is_a_testbed_parameter():
    scenario, params = apply(registry.get("scale-out"), {"variant": "patent"})
    assert params.variant == "patent" and scenario.params["variant"] == "patent"
    assert apply(registry.get("scale-out"), {})[1].variant == "steered"


def test_the_fast_path_is_a_testbed_parameter_on_by_default():
    scenario, params = apply(registry.get("scale-out"), {"fastpath": "off"})
    assert params.fastpath == "off" and scenario.params["fastpath"] == "off"
    assert apply(registry.get("scale-out"), {})[1].fastpath == "xdp"


def test_chain_longer_than_the_lb_nodes_names_the_limit():
    with pytest.raises(ParamError, match=r"chain_len=5 \(lbs=4\).*chain_len 1\.\.lbs"):
        apply(registry.get("scale-out"), {"l": "5"})


def test_events_need_the_hosts_they_name():
    assert event_needs(registry.get("lb-failure"))["lbs"] == 2
    with pytest.raises(ParamError, match="lb-restart's events name lb2, lb3: LBS must be >= 3"):
        apply(registry.get("lb-restart"), {"lbs": "2", "l": "2"})
    with pytest.raises(ParamError, match="NFS must be >= 2"):
        apply(registry.get("nf-failure"), {"nfs": "1"})


def test_spare_hosts_default_to_what_the_events_add():
    assert event_needs(registry.get("real-traffic"))["spare_nfs"] == 2
    _, p = apply(registry.get("lb-failure-during-scale-out"), {})
    assert p.spare_nfs >= 1
    with pytest.raises(ParamError, match="adds 2 NF host.*spare_nfs must be >= 2, got 1"):
        apply(registry.get("real-traffic"), {"spare_nfs": "1"})
    _, p = apply(registry.get("scale-out"), {"spare_nfs": "3"})
    assert p.spare_nfs == 3


@pytest.mark.parametrize("total", [1, 7, 20, 21, 60, 333])
def test_flows_spread_over_the_batches_in_proportion(total):
    base = registry.get("scale-out")                    # batches of 24 and 12
    s = scale_flows(base, total)
    counts = [b.count for b in s.batches]
    assert sum(counts) == total
    for c, b in zip(counts, base.batches):
        share = total * b.count / sum(x.count for x in base.batches)
        assert abs(c - share) < 1
    assert [b.start_s for b in s.batches] == [b.start_s for b in base.batches]


def test_flows_and_rate_reach_the_planned_flows():
    s, p = apply(registry.get("scale-out"), {"flows": "30", "rate": "1.5"})
    from scenarios.traffic import plan_flows
    flows = plan_flows(s.batches, ["c1", "c2"], ["s1", "s2"], seed=3)
    assert len(flows) == 30 and {f.rate_mbit for f in flows} == {1.5}


@pytest.mark.parametrize("overrides, message", [
    ({"flows": "abc"}, "whole number"), ({"flows": "0"}, r"within 1\.\."),
    ({"rate": "x"}, "number of Mbit/s"), ({"rate": "0"}, "above 0"),
    ({"lbs": "0"}, "lbs=0"), ({"clients": "two"}, "clients")])
def test_bad_values_say_which_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ParamError, match=message):
        apply(registry.get("scale-out"), overrides)


def test_builtin_scenarios_pass_with_no_overrides():
    for s in registry.SCENARIOS.values():
        apply(s, {})


def test_the_cli_takes_topology_only():
    assert topology({"lbs": "5", "l": "2"}).lbs == 5
    with pytest.raises(ParamError, match="sizes only"):
        topology({"flows": "3"})


@pytest.mark.parametrize("args, message", [
    (["run", "scale-out", "--set", "l=9"], "chain_len=9"),
    (["run", "scale-out", "--seeds", "5-1"], "backwards"),
    (["run", "scale-out", "--seed", "1", "--seeds", "1-2"], "not both"),
    (["run", "scale-out", "--mode", "chain,nope"], "unknown mode"),
    (["cli", "--mode", "chain,maglev"], "one mode"),
    (["matrix", "--set", "lbs=1", "--set", "l=1"], "LBS must be >= 2"),
    (["sweep", "scale-out", "--param", "speed", "--values", "1"], "unknown parameter 'speed'"),
    (["sweep", "scale-out", "--param", "L", "--values", "1,9"], "chain_len=9"),
    (["sweep", "scale-out", "--param", "L", "--values", "1", "--set", "l=2"], "is swept"),
    (["run", "scale-out", "--set", "variant=ring"], "variant='ring'"),
    (["run", "scale-out", "--variant", "patent", "--set", "variant=steered"], "disagree"),
    (["run", "scale-out", "--variant", "ring"], "invalid choice: 'ring'"),
    (["sweep", "scale-out", "--param", "variant", "--values", "patent,x"], "variant='x'"),
    (["run", "scale-out", "--set", "fastpath=ebpf"], "fastpath='ebpf'"),
    (["run", "scale-out", "--fastpath", "off", "--set", "fastpath=xdp"], "disagree"),
    (["sweep", "scale-out", "--param", "fastpath", "--values", "xdp,on"], "fastpath='on'")])
def test_command_line_errors_are_one_line_without_a_traceback(args, message):
    r = subprocess.run([sys.executable, "-m", "scenarios", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
