"""Open-loop arrivals (scenarios.arrivals) and their generator (agents.loadgen, on loopback).

The statistical tests use fixed seeds: they are deterministic, and each would fail for a
generator with the wrong rate, gaps or sizes (the alternatives are far outside the bounds).
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from agents import loadgen
from scenarios import arrivals
from scenarios.arrivals import ArrivalBatch, SizeDist, SizeError, parse_cdf, plan_arrivals

CLIENTS = ["c1", "c2", "c3"]
SERVERS = ["s1", "s2"]


def test_poisson_times_have_the_rate_and_exponential_gaps():
    import random
    rng = random.Random(7)
    times = arrivals.poisson_times(300.0, 60.0, rng)
    # count: Poisson(18000), sd 134; a generator off by 5% would be 900 away
    assert abs(len(times) - 18000) < 4 * 134
    gaps = np.diff([0.0] + times)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 300.0)).pvalue > 0.01
    # counts per second are Poisson: variance about the mean (a paced generator has ~0)
    per_s = np.bincount(np.floor(times).astype(int), minlength=60)
    assert 0.8 < per_s.var() / per_s.mean() < 1.25
    assert all(0 <= t < 60.0 for t in times) and times == sorted(times)


def test_sizes_follow_the_websearch_cdf():
    dist = SizeDist.parse("websearch", max_bytes=30_000_000)
    rng = np.random.default_rng(3)
    sizes = np.array([dist.sample(u) for u in rng.random(20000)])
    # the sampled sizes against the CDF they are drawn from
    res = stats.kstest(sizes, np.vectorize(dist.cdf))
    assert res.pvalue > 0.01, res
    # and the file's own points: 53% of flows below 80 KB, 97% below 10 MB
    assert abs((sizes <= 80000).mean() - 0.53) < 0.015
    assert abs((sizes <= 10_000_000).mean() - 0.97) < 0.005
    assert abs(sizes.mean() / dist.mean() - 1) < 0.05


def test_sizes_follow_the_datamining_cdf_and_the_cut():
    dist = SizeDist.parse("datamining", max_bytes=1_000_000)
    rng = np.random.default_rng(5)
    sizes = np.array([dist.sample(u) for u in rng.random(20000)])
    assert abs(np.median(sizes) - 1100) < 60
    assert sizes.max() == 1_000_000 and sizes.min() >= 1
    # the cut: everything above 1 MB (about 8.6% of flows) is 1 MB
    above = 1 - SizeDist.parse("datamining", max_bytes=10 ** 9).cdf(1_000_000)
    assert abs((sizes == 1_000_000).mean() - above) < 0.01
    assert stats.kstest(sizes[sizes < 1_000_000],
                        lambda x: np.vectorize(dist.cdf)(x) / dist.cdf(999_999)).pvalue > 0.01
    assert abs(sizes.mean() / dist.mean() - 1) < 0.05


def test_fixed_sizes_and_bad_specs():
    assert SizeDist.parse("fixed:20000").sample(0.3) == 20000
    assert SizeDist.parse("fixed:20000", max_bytes=1000).sample(0.9) == 1000
    for bad in ("fixed:0", "fixed:x", "nosuchcdf"):
        with pytest.raises(SizeError):
            SizeDist.parse(bad)
    with pytest.raises(SizeError, match="max_bytes"):
        SizeDist.parse("websearch", max_bytes=0)


@pytest.mark.parametrize("text,why", [
    ("", "no points"),
    ("100 0.5\n50 1.0\n", "must not decrease"),
    ("100 0.5\n200 0.4\n300 1\n", "must not decrease"),
    ("100 0.5\n200 0.9\n", "last fraction must be 1"),
    ("100 x\n", "expected"),
    ("-5 0.5\n10 1\n", "size >= 0"),
    ("10 50\n20 150\n", "outside 0..1"),
])
def test_a_bad_cdf_file_is_refused_with_its_line(text, why):
    with pytest.raises(SizeError, match=why):
        parse_cdf(text, "my.cdf")


def test_a_cdf_in_percent_and_a_file_of_its_own(tmp_path):
    assert parse_cdf("# sizes\n0 0\n1000 50\n2000 100\n") == ((0, 0), (1000, 0.5), (2000, 1.0))
    f = tmp_path / "mine.cdf"
    f.write_text("100 0\n300 1\n")
    d = SizeDist.parse(str(f))
    assert d.sample(0.5) == 200 and d.mean() == 200


def test_the_plan_is_the_seeds_and_ports_do_not_collide():
    batches = (ArrivalBatch(200, 1.0, 5.0, "websearch"), ArrivalBatch(50, 3.0, 2.0, "fixed:500"))
    a = plan_arrivals(batches, CLIENTS, SERVERS, seed=1)
    assert a == plan_arrivals(batches, CLIENTS, SERVERS, seed=1)
    assert a != plan_arrivals(batches, CLIENTS, SERVERS, seed=2)
    five = {(x.client_ip, x.client_port, x.server_ip, x.server_port) for x in a}
    assert len(five) == len(a) and len({x.conn_id for x in a}) == len(a)
    assert all(arrivals.FIRST_PORT <= x.client_port <= arrivals.LAST_PORT for x in a)
    assert [x.start_s for x in a] == sorted(x.start_s for x in a)
    assert all(1.0 <= x.start_s < 6.0 for x in a if x.batch == 0)
    assert all(x.size == 500 and 3.0 <= x.start_s < 5.0 for x in a if x.batch == 1)
    assert 900 < sum(x.batch == 0 for x in a) < 1100


def test_a_plan_larger_than_the_ports_is_refused():
    with pytest.raises(ValueError, match="lower rate_cps"):
        plan_arrivals((ArrivalBatch(5000, 0, 10.0, "fixed:1"),), ["c1"], SERVERS, seed=1)


@pytest.mark.parametrize("kw,why", [
    ({"rate_cps": 0}, "rate_cps"), ({"rate_cps": 1e6}, "rate_cps"),
    ({"duration_s": 0}, "duration_s"), ({"sizes": "nope"}, "nope"),
])
def test_bad_batches_say_what_is_wrong(kw, why):
    args = {"rate_cps": 10, "start_s": 0, "duration_s": 1, **kw}
    with pytest.raises(ValueError, match=why):
        ArrivalBatch(**args)


def test_a_scaled_batch_keeps_its_connections():
    b = ArrivalBatch(100, 2.0, 10.0, timeout_s=8.0, hold_s=3.0)
    s = b.scaled(2.0)
    assert (s.rate_cps, s.start_s, s.duration_s, s.timeout_s, s.hold_s) == (50, 4, 20, 16, 6)


def test_outcomes_join_the_generator_records_by_connection():
    planned = plan_arrivals((ArrivalBatch(20, 0, 1.0, "fixed:10"),), CLIENTS, SERVERS, 1)
    recs = [{"conn_id": planned[0].conn_id, "completed": True, "bytes": 10, "duration_s": 0.01,
             "error": ""}]
    out = arrivals.outcomes(planned, recs)
    assert out[0]["completed"] and out[0]["bytes"] == 10
    assert out[0]["start_s"] == planned[0].start_s       # no run start given: as planned
    late = arrivals.outcomes(planned, [dict(recs[0], start=1000.25)], t0_wall=1000.0)
    assert late[0]["start_s"] == 0.25 and late[1]["start_s"] == planned[1].start_s
    assert all(not o["completed"] and "no outcome" in o["error"] for o in out[1:])
    from scenarios.report import _app_list
    assert len(_app_list(out)) == len(planned)       # valid app records for the report


# ----------------------------------------------------------------------------- the generator

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _size_server(*extra: str) -> tuple[subprocess.Popen, int]:
    """A size server on loopback, once it listens: (process, port)."""
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "agents.loadgen", "serve", "--port", str(port),
                          *extra])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p, port
        time.sleep(0.05)
    p.kill()
    pytest.fail("the size server did not listen")


@pytest.fixture
def server():
    p, port = _size_server()
    yield port
    p.terminate()
    assert p.wait(10) == 0, "SIGTERM ends the server with 0"


def test_the_generator_completes_every_connection_with_its_bytes(server, tmp_path):
    plan = [{"conn_id": f"n{i}", "at": i / 400.0, "server": "127.0.0.1", "port": server,
             "cport": 0, "size": [1, 1000, 200_000][i % 3], "timeout": 10.0}   # 0: any port
            for i in range(600)]
    path = tmp_path / "plan.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in plan))
    out, summ = tmp_path / "out.jsonl", tmp_path / "summary.json"
    rc = subprocess.run([sys.executable, "-m", "agents.loadgen", "run", "--plan", str(path),
                         "--out", str(out), "--summary", str(summ)], timeout=60).returncode
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    summary = json.loads(summ.read_text())
    assert rc == 0, summary
    assert len(recs) == 600 and all(r["completed"] and not r["error"] for r in recs)
    assert sorted(r["bytes"] for r in recs) == sorted(p["size"] for p in plan)
    assert summary["planned"] == summary["completed"] == 600
    assert summary["max_concurrent"] >= 1 and summary["max_late_ms"] < 1000


def test_the_generator_records_refused_and_timed_out_connections(tmp_path):
    closed = _free_port()
    silent = socket.socket()                 # accepts (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    plan = [{"conn_id": "r", "at": 0, "server": "127.0.0.1", "port": closed, "cport": 0,
             "size": 10, "timeout": 2.0},
            {"conn_id": "t", "at": 0, "server": "127.0.0.1", "port": silent.getsockname()[1],
             "cport": 0, "size": 10, "timeout": 0.3}]
    try:
        records, summary = loadgen.run(plan)
    finally:
        silent.close()
    by = {r["conn_id"]: r for r in records}
    assert by["r"]["error"] == "connect: ECONNREFUSED" and not by["r"]["completed"]
    assert by["t"]["error"] == "timeout: read, 0 of 10 bytes" and not by["t"]["completed"]
    assert by["t"]["connect_ms"] is not None and 0.29 < by["t"]["duration_s"] < 1.0
    assert summary["completed"] == 0
    assert summary["errors"] == {"connect: ECONNREFUSED": 1, "timeout: read": 1}


def test_a_bad_plan_is_exit_2(tmp_path):
    path = tmp_path / "plan.jsonl"
    path.write_text('{"conn_id": "x"}\n')
    p = subprocess.run([sys.executable, "-m", "agents.loadgen", "run", "--plan", str(path),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2 and "plan.jsonl:1" in p.stderr and "Traceback" not in p.stderr


def test_a_hold_longer_than_the_servers_idle_limit_is_not_cut():
    p, port = _size_server("--idle", "0.5")
    try:
        records, summary = loadgen.run([{"conn_id": "h", "at": 0, "server": "127.0.0.1",
                                         "port": port, "cport": 0, "size": 5000, "hold": 2.0,
                                         "timeout": 6.0}])
    finally:
        p.terminate()
        p.wait(10)
    assert summary["completed"] == 1, records
    assert records[0]["bytes"] == 5000 and records[0]["duration_s"] >= 2.0


def test_held_connections_stay_open_together(server, tmp_path):
    """hold: the server keeps each connection idle first, so they overlap (Little's law)."""
    plan = [{"conn_id": f"h{i}", "at": i / 400.0, "server": "127.0.0.1", "port": server,
             "cport": 0, "size": 100, "hold": 1.0, "timeout": 10.0} for i in range(400)]
    t = time.monotonic()
    records, summary = loadgen.run(plan)
    assert summary["completed"] == 400, summary
    assert summary["max_concurrent"] >= 350          # ~all 400 open within the 1 s hold
    assert all(r["duration_s"] >= 0.99 for r in records)
    assert time.monotonic() - t < 5


# ----------------------------------------------------------------------------- the file format

ARRIVALS_FILE = """
name = "load"
[[arrivals]]
rate_cps = 150
start_s = 1.0
duration_s = 5.0
sizes = "{sizes}"
max_bytes = 50000
hold_s = 0.5
"""


def test_a_file_with_arrivals_round_trips(tmp_path):
    from scenarios import files
    (tmp_path / "my.cdf").write_text("100 0\n1000 1\n")
    path = tmp_path / "load.toml"
    path.write_text(ARRIVALS_FILE.format(sizes="my.cdf"))
    s = files.load(path)
    (b,) = s.arrivals
    assert (b.rate_cps, b.start_s, b.duration_s, b.max_bytes, b.hold_s) == (150, 1, 5, 50000, 0.5)
    assert b.sizes == str(tmp_path / "my.cdf"), "a CDF file is found next to the scenario file"
    assert files.parse(files.dump(s)) == s
    assert s.traffic_s >= 6.5


@pytest.mark.parametrize("extra,why", [
    ("rate_cps = 0\n", "rate_cps"), ("burst = 3\n", "unknown key 'burst'"),
    ("hold_s = 99\n", "hold_s"),
])
def test_bad_arrivals_in_a_file_name_the_key(tmp_path, extra, why):
    from scenarios import files
    text = ARRIVALS_FILE.format(sizes="websearch")
    text = "\n".join(line for line in text.splitlines()
                     if not line.startswith(extra.split("=")[0].strip())) + "\n" + extra
    with pytest.raises(files.ScenarioFileError, match=why) as e:
        files.parse(text, "f.toml")
    assert "f.toml: arrivals[0]" in str(e.value)


def test_an_unknown_size_distribution_is_named(tmp_path):
    from scenarios import files
    with pytest.raises(files.ScenarioFileError, match="nosuch.*websearch"):
        files.parse(ARRIVALS_FILE.format(sizes="nosuch"), "f.toml")


def test_cps_sets_every_arrival_rate_and_is_validated():
    from scenarios import files
    from scenarios.params import ParamError, apply
    s = files.parse(ARRIVALS_FILE.format(sizes="websearch"))
    out, _ = apply(s, {"cps": "300"})
    assert [a.rate_cps for a in out.arrivals] == [300.0]
    for bad in ("0", "x", "1e9"):
        with pytest.raises(ParamError, match="cps"):
            apply(s, {"cps": bad})
    from scenarios.registry import get
    with pytest.raises(ParamError, match="no \\[\\[arrivals\\]\\]"):
        apply(get("scale-out"), {"cps": "10"})
