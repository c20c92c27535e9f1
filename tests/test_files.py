"""Scenario files (scenarios.files): the TOML format, good and bad files, the built-in ones."""
from __future__ import annotations

import subprocess
import sys

import pytest

from scenarios import files, registry
from scenarios.params import apply

GOOD = """
name = "pool-change"
description = "two NFs join at once, one is drained"
[topology]
lbs = 5
chain_len = 2
[[flows]]
count = 10
start_s = 0.0
spread_s = 2.0
duration_s = 20.0
rate_mbit = 1.5
[[flows]]
count = 4
start_s = 5.0
duration_s = 8
proto = "udp"
[[events]]
at_s = 8.0
action = "add_nf"
[[events]]
at_s = 8.0
action = "add_nf"
[[events]]
at_s = 12.0
action = "drain_nf"
target = "nf1"
[[apps]]
kind = "http_short"
count = 3
start_s = 1.0
spread_s = 5.0
"""


def test_a_good_file_becomes_its_scenario():
    s = files.parse(GOOD, "pool.toml")
    assert s.name == "pool-change" and s.params == {"lbs": 5, "chain_len": 2}
    assert [(b.count, b.rate_mbit, b.proto, b.spread_s) for b in s.batches] == [
        (10, 1.5, "tcp", 2.0), (4, 2.0, "udp", 0.0)]
    assert [(e.at_s, e.action, e.target) for e in s.events] == [
        (8.0, "add_nf", ""), (8.0, "add_nf", ""), (12.0, "drain_nf", "nf1")]
    assert s.apps[0].kind == "http_short" and s.apps[0].count == 3


def test_spares_default_to_what_the_events_add():
    s, p = apply(files.parse(GOOD, "pool.toml"), {})
    assert p.spare_nfs == 2 and p.lbs == 5 and p.chain_len == 2


def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line + "\n", "", 1)


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("rate_mbit = 1.5", "rate = 1.5"),
     "pool.toml: flows[0]: unknown key 'rate' (allowed: count, start_s"),
    (GOOD.replace('name = "pool-change"', 'name = "pool-change"\nseed = 3'),
     "the file: unknown key 'seed'"),
    (GOOD.replace("lbs = 5", "lb = 5"), "topology: unknown key 'lb'"),
    (_without(GOOD, 'name = "pool-change"'), "missing key 'name'"),
    (GOOD.replace("count = 10", "count = -1"), "flows[0].count: must be a whole number >= 0"),
    (GOOD.replace("count = 10", 'count = "ten"'), "flows[0].count"),
    (GOOD.replace("duration_s = 20.0", "duration_s = 0"), "flows[0].duration_s: must be a number > 0"),
    (GOOD.replace('proto = "udp"', 'proto = "sctp"'), "flows[1].proto: must be one of tcp, udp"),
    (GOOD.replace('action = "drain_nf"', 'action = "explode"'), "events[2].action: must be one of add_nf"),
    (GOOD.replace("lbs = 5", "lbs = 0"), "topology.lbs: must be a whole number >= 1"),
    (GOOD.replace('kind = "http_short"', 'kind = "ftp"'), "apps[0].kind: must be one of"),
    (GOOD.replace("spread_s = 5.0", "spread_s = 5.0\noptions = { speed = 1 }"),
     "apps[0]: app kind http_short: unknown option(s) speed"),
    ('name = "x"\n', "plans no traffic"),
    ('name = "a b"\n[[flows]]\ncount = 1\nstart_s = 0\nduration_s = 1\n', "name: must be letters"),
    ("name = [", "not valid TOML"),
    ('name = "x"\nflows = 3\n', "flows: must be an array of tables"),
])
def test_a_bad_file_names_the_file_the_key_and_what_is_allowed(text, message):
    with pytest.raises(files.ScenarioFileError, match=None) as e:
        files.parse(text, "pool.toml")
    assert message in str(e.value) and str(e.value).startswith("pool.toml: "), str(e.value)


def test_the_builtin_scenarios_are_files_of_the_format():
    assert list(registry.SCENARIOS) == [s.name for s in files.builtin().values()]
    assert len(list(files.BUILTIN.glob("*.toml"))) == len(registry.SCENARIOS) >= 10
    for s in registry.SCENARIOS.values():
        assert files.parse(files.dump(s), s.name) == s, s.name


def test_a_file_runs_from_the_command_line_and_its_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('action = "add_nf"', 'action = "add_nfs"', 1))
    r = subprocess.run([sys.executable, "-m", "scenarios", "run", "--file", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{bad}: events[0].action: must be one of" in r.stderr
    r = subprocess.run([sys.executable, "-m", "scenarios", "run", "scale-out", "--file",
                        str(bad)], capture_output=True, text=True, timeout=60)
    assert "not both" in r.stderr
