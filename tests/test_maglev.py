"""Maglev NF proposals (agents.maglev)."""
import collections
import subprocess
import sys
from pathlib import Path

import pytest

from agents.keys import flow_key
from agents.maglev import Maglev

SMALL = 5003  # prime; keeps table builds quick where the size does not matter


def names(n, prefix="nf"):
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def keys(n):
    return [flow_key(f"10.0.1.{i % 250 + 1}", "10.0.2.1", 6, 10000 + i, 5201) for i in range(n)]


KEYS = keys(20000)


def assignment(m):
    return [m.lookup(k) for k in KEYS]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 32])
def test_table_balanced(n):
    m = Maglev(names(n))
    counts = m.slots()
    assert set(counts) == set(names(n))
    assert max(counts.values()) / min(counts.values()) <= 1.10
    assert sum(counts.values()) == m.size == 65537


def test_keys_spread_within_ten_percent():
    counts = collections.Counter(assignment(Maglev(names(4))))
    assert len(counts) == 4
    assert max(counts.values()) / min(counts.values()) <= 1.10


def test_lookup_consistent_and_order_independent():
    a = Maglev(["nf1", "nf2", "nf3"])
    b = Maglev(["nf3", "nf1", "nf2"])
    assert a.nfs == b.nfs == ("nf1", "nf2", "nf3")
    assert assignment(a) == assignment(b) == assignment(a)


def test_deterministic_across_processes():
    code = ("from agents.maglev import Maglev; from agents.keys import flow_key; "
            "m = Maglev(['nf1','nf2','nf3','nf4']); "
            "print(','.join(m.lookup(flow_key('10.0.1.1','10.0.2.1',6,p,5201)) for p in range(200)))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[1]).stdout
            for seed in ("1", "2")}
    assert len(runs) == 1
    m = Maglev(["nf1", "nf2", "nf3", "nf4"])
    assert runs.pop().strip() == ",".join(m.lookup(flow_key("10.0.1.1", "10.0.2.1", 6, p, 5201))
                                          for p in range(200))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_join_moves_near_ideal_share(n):
    before = assignment(Maglev(names(n)))
    after = assignment(Maglev(names(n + 1)))
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    ideal = 1 / (n + 1)
    assert abs(len(moved) / len(KEYS) - ideal) <= 0.03
    # the keys that move, move mostly to the newcomer
    to_new = sum(1 for _, a in moved if a == f"nf{n + 1}")
    assert to_new / len(moved) >= 0.9


@pytest.mark.parametrize("n, gone", [(3, "nf2"), (5, "nf1"), (8, "nf8")])
def test_leave_moves_only_the_leavers_keys(n, gone):
    before = assignment(Maglev(names(n)))
    after = assignment(Maglev([x for x in names(n) if x != gone]))
    assert gone not in after
    others_moved = sum(1 for b, a in zip(before, after) if b != gone and b != a)
    assert others_moved / len(KEYS) <= 0.02


def test_empty_pool():
    m = Maglev([])
    assert m.nfs == ()
    with pytest.raises(LookupError, match="no active NF"):
        m.lookup(KEYS[0])


def test_single_nf_gets_everything():
    m = Maglev(["only"], size=SMALL)
    assert set(assignment(m)) == {"only"}


def test_unicode_names():
    m = Maglev(["nf-α", "nf-β"], size=SMALL)
    assert set(assignment(m)) == {"nf-α", "nf-β"}


@pytest.mark.parametrize("nfs, size, message", [
    (["a", "b"], 65536, "prime"),
    (["a", "b"], 1, "prime"),
    (["a", "b"], 9, "prime"),
    (["a", "b"], 2.0, "prime"),
    (["a", "b", "c"], 3, "must exceed"),
    (["a", "b", "c"], 2, "must exceed"),
    (["a", "a"], 7, "duplicate"),
    (["a", ""], 7, "non-empty"),
    (["a", 3], 7, "non-empty"),
    ("nf1", 7, "not a string"),
])
def test_bad_arguments(nfs, size, message):
    with pytest.raises(ValueError, match=message):
        Maglev(nfs, size=size)
