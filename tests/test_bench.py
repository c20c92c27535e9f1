"""The testbed benchmark's parsing, figures and writing (bench.measure, bench.traffic,
bench.__main__, bench.testbed_bench). Timings are never asserted.

The traffic tools that need no root (TCP server, connects, connect rate, UDP probes) run for
real on the loopback interface; the bare forwarder runs in a scratch network namespace
(root only).
"""
import csv
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench import COLUMNS, Row, read_csv
from bench import __main__ as cli
from bench import measure as m
from bench import testbed_bench as tbb
from bench import traffic

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PY = sys.executable

DUMP_PORTS = """\
OFPST_PORT reply (OF1.3) (xid=0x2): 2 ports
  port 2001: rx pkts=139854, bytes=10785785, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=504927, bytes=761618577, drop=0, errs=0, coll=0
           duration=36.266s
  port 3001: rx pkts=87649, bytes=98614861, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=87276, bytes=98592829, drop=0, errs=0, coll=0
           duration=36.249s
  port LOCAL: rx pkts=0, bytes=0, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=0, bytes=0, drop=12, errs=0, coll=0
"""


# --- measure ------------------------------------------------------------------------------

def test_percentile():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert m.percentile(xs, 50) == 3.0
    assert m.percentile(xs, 0) == 1.0 and m.percentile(xs, 100) == 5.0
    assert m.percentile(xs, 25) == 2.0
    assert m.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(m.percentile([], 50))
    with pytest.raises(ValueError):
        m.percentile(xs, 101)


def test_connect_times():
    doc = {"samples": [{"t": 1.0, "sport": 4000, "ms": 2.5, "error": ""},
                       {"t": 1.1, "sport": None, "ms": None, "error": "timeout"},
                       {"t": 1.2, "sport": 4001, "ms": 1.5, "error": ""}]}
    assert m.connect_times(doc) == ([2.5, 1.5], 1)
    with pytest.raises(m.ParseError):
        m.connect_times({"conns": []})


def test_rate_outcome_sums_several_clients():
    a = {"conns": [[1.0, 4000, "10.0.2.1:9000", 2.0, ""], [1.01, 4001, "10.0.2.1:9000", None, "timeout"]]}
    b = {"conns": [[1.0, 5000, "10.0.2.2:9000", 4.0, ""],
                   [1.0, 5001, "10.0.2.2:9000", None, "Connection refused"],
                   [1.0, 5002, "10.0.2.2:9000", None, "timeout"]]}
    out = m.rate_outcome([a, b])
    assert (out["attempted"], out["ok"], out["errors"]) == (5, 2, 3)
    assert out["reasons"] == {"timeout": 2, "Connection refused": 1}
    assert out["p50_ms"] == 3.0
    with pytest.raises(m.ParseError):
        m.rate_outcome([{"samples": []}])


@pytest.mark.parametrize("steps, best", [
    ([(100, 0), (200, 0), (400, 3), (800, 0)], 200),   # stops at the first step with errors
    ([(100, 0), (200, 0)], 200),
    ([(100, 1)], 0),
    ([], 0),
])
def test_best_rate(steps, best):
    assert m.best_rate(steps) == best


def _flow(times, seq0=0):
    return [(seq0 + i, t, t - 0.001) for i, t in enumerate(times)]


def test_restore_time():
    every = [round(0.01 * i, 3) for i in range(300)]            # 0 .. 2.99 s, 10 ms apart
    gap = [t for t in every if not 1.00 < t < 1.60]             # out from 1.0 to 1.6 s
    two_gaps = [t for t in every if not (1.00 < t < 1.20 or 1.50 < t < 1.90)]
    out = m.restore_time({"steady": _flow(every), "gap": _flow(gap), "two": _flow(two_gaps),
                          "late": _flow([2.5, 2.6])}, t_kill=1.005, gap_s=0.05)
    assert out["live_flows"] == 3                   # 'late' started after the kill
    assert out["interrupted_flows"] == 2
    assert out["restore_s"] == pytest.approx(1.90 - 1.005)   # the end of the last gap counts
    assert out["max_gap_s"] == pytest.approx(0.60)
    assert out["lost_flows"] == 0 and out["lost_probes"] == 0


def test_restore_time_counts_lost_probes_and_dead_flows():
    arrivals = {"dead": _flow([0.1, 0.2, 0.3]),
                "holes": [(0, 0.1, 0), (1, 0.2, 0), (4, 0.5, 0), (5, 0.6, 0)]}
    out = m.restore_time(arrivals, t_kill=0.35, gap_s=0.05)
    assert out["restore_s"] == math.inf and out["lost_flows"] == 1
    assert out["lost_probes"] == 2
    assert m.restore_time({}, 1.0, 0.05)["restore_s"] == 0.0


def test_iperf_bps_from_real_outputs():
    tcp = json.loads((FIXTURES / "iperf3_tcp_ok.json").read_text())
    assert m.iperf_bps(tcp) == tcp["end"]["sum_received"]["bits_per_second"] > 0
    udp = json.loads((FIXTURES / "iperf3_udp_ok.json").read_text())
    assert m.iperf_bps(udp) > 0
    with pytest.raises(m.ParseError, match="iperf3 error"):
        m.iperf_bps(json.loads((FIXTURES / "iperf3_refused.json").read_text()))
    with pytest.raises(m.ParseError):
        m.iperf_bps({"end": {}})


def test_ovs_port_rx():
    assert m.ovs_port_rx(DUMP_PORTS, 3001) == 87649
    assert m.ovs_port_rx(DUMP_PORTS, "2001") == 139854
    assert m.ovs_port_rx(DUMP_PORTS, "LOCAL") == 0
    with pytest.raises(m.ParseError):
        m.ovs_port_rx(DUMP_PORTS, 4001)


def test_rss_bytes():
    assert m.rss_bytes(Path("/proc/self/status").read_text()) > 1 << 20
    assert m.rss_bytes("Name:\tpython\nVmRSS:\t   2048 kB\n") == 2048 * 1024
    with pytest.raises(m.ParseError):
        m.rss_bytes("Name:\tkthreadd\n")


def test_first_use():
    conns = [[10.0, 4000, "10.0.2.1:9000", 2.0, ""],       # not through the NF
             [10.5, 4001, "10.0.2.1:9000", 3.0, ""],       # through it (forward direction)
             [10.2, 4002, "10.0.2.1:9000", None, "timeout"],
             [10.1, 4003, "10.0.2.1:9001", 1.0, ""],       # same source port, other server port
             [10.3, 4003, "10.0.2.1:9000", 1.0, ""]]       # through it (reply direction)
    flows = [{"src": "10.0.1.1", "dst": "10.0.2.1", "proto": "tcp", "sport": 4001, "dport": 9000},
             {"src": "10.0.2.1", "dst": "10.0.1.1", "proto": "tcp", "sport": 9000, "dport": 4003},
             {"src": "10.0.1.1", "dst": "10.0.2.1", "proto": "tcp", "sport": 4002, "dport": 9000},
             {"src": "10.0.1.1", "dst": "10.0.2.1", "proto": "udp", "sport": 4000, "dport": 9000}]
    assert m.first_use(conns, "10.0.1.1", flows) == pytest.approx(10.301)
    assert m.first_use(conns, "10.0.1.2", flows) is None


def test_first_use_with_a_real_nf_dump():
    dump = json.loads((FIXTURES / "run_ns" / "nf1.json").read_text())
    f = next(f for f in dump["flows"] if f["src"] == "10.0.1.1" and f["proto"] == "tcp")
    conns = [[5.0, f["sport"], f"{f['dst']}:{f['dport']}", 1.0, ""]]
    assert m.first_use(conns, "10.0.1.1", dump["flows"]) == pytest.approx(5.001)


# --- figures -------------------------------------------------------------------------------

def samples(p50: float, p99: float, errors: int = 0) -> dict:
    """101 connect times whose p50 and p99 are the given ones."""
    ms = [p50 * 0.5] * 50 + [p50] + [p50 * 1.5] * 48 + [p99, p99 * 2]
    return {"ms": ms, "errors": errors, "n": len(ms) + errors}


def test_connect_rows():
    c = {"maglev": samples(1.2, 3.0), "direct": samples(0.5, 1.0),
         "L3_N3": samples(2.0, 5.0, errors=1), "L1_N3": samples(1.5, 4.0)}
    rows = {r.metric: r for r in tbb.connect_rows(c)}
    over = rows["first_packet_overhead_ms_p50"]
    assert over.value == pytest.approx(0.8) and over.baseline_value == pytest.approx(1.2)
    assert rows["first_packet_overhead_ms_p99"].value == pytest.approx(2.0)
    assert rows["connect_ms_p50_L1_N3"].baseline_value == pytest.approx(1.2)
    assert rows["connect_ms_p50_direct"].value == pytest.approx(0.5)
    assert "connect_ms_p50_L3_N8" not in rows
    assert (rows["connect_errors"].value, rows["connect_errors"].baseline_value) == (1, 405)
    assert tbb.connect_rows({}) == []
    # without the maglev baseline: no overhead row, connect rows without a baseline
    rows = {r.metric: r for r in tbb.connect_rows({"L3_N3": c["L3_N3"]})}
    assert "first_packet_overhead_ms_p50" not in rows
    assert rows["connect_ms_p50_L3_N3"].ratio is None


def _rec(kind_in, kernel, woke, marks):
    """A FirstTrace record; marks: (label, wall us, cpu us) after the read (its first)."""
    us = 1000
    return {"in": kind_in, "kernel_ns": kernel * us, "woke_ns": woke * us,
            "marks": [[label, wall * us, cpu * us] for label, wall, cpu in marks]}


def _chain_write(kernel, woke, read, decoded, handled, sends, done):
    """A chain frame's record: sends as (kind, encoded at, sent at), cpu = wall - 10 us."""
    marks = [("read", read, 0), ("decoded", decoded, decoded - read - 10),
             ("handled", handled, handled - read - 10)]
    for kind, encoded, sent in sends:
        if encoded is not None:
            marks.append(("encoded", encoded, encoded - read - 10))
        marks.append((f"sent {kind}", sent, sent - read - 10))
    return _rec("Write", kernel, woke, marks + [("done", done, done - read - 10)])


def test_first_packet_stages_break_each_stage_down_from_the_agents_records():
    records = [
        # the SYN: until its Write left (not the later data frame); p50 of 290 and 200
        _rec("syn", 10, 40, [("read", 45, 0), ("handled", 200, 150), ("encoded", 250, 190),
                             ("sent Write", 300, 230), ("sent data", 400, 300),
                             ("done", 420, 310)]),
        _rec("syn", 1000, 1030, [("read", 1030, 0), ("handled", 1100, 70),
                                 ("encoded", 1150, 110), ("sent Write", 1200, 150),
                                 ("done", 1210, 155)]),
        # a middle node: 310 -> its Write out at 500
        _chain_write(310, 330, 331, 350, 420, [("Write", 450, 500)], 520),
        # the tail: 510 -> the data frame at 650, after the Answer
        _chain_write(510, 520, 520, 530, 580, [("Answer", 600, 610), ("data", None, 650),
                                               ("Ack", 680, 700)], 720),
        _rec("Answer", 610, 700, [("read", 700, 0), ("decoded", 705, 5), ("handled", 730, 25),
                                  ("done", 740, 30)]),
        _rec("synack", 900, 910, [("read", 911, 0), ("handled", 940, 25),
                                  ("sent data", 960, 45), ("done", 970, 50)]),
        _rec("synack", 0, 910, [("read", 911, 0), ("done", 970, 50)]),   # no kernel time
        _rec("Query", 0, 1, [("read", 2, 0), ("done", 5, 3)]),          # not a stage
    ]
    bd = tbb.first_packet_breakdown(records, "chain")
    assert list(bd["stage"]) == ["syn", "mid_write", "tail_write", "answer", "synack"]
    assert list(bd["n"]) == [2, 1, 1, 1, 1]
    by = bd.set_index("stage")
    assert by.loc["syn", "total"] == pytest.approx(245)
    assert by.loc["syn", "wake"] == pytest.approx(30)
    assert by.loc["syn", "engine"] == pytest.approx((155 + 70) / 2)
    assert by.loc["syn", "encode"] == pytest.approx(50)
    assert by.loc["syn", "send"] == pytest.approx(50)          # the data frame came later
    assert by.loc["syn", "cpu"] == pytest.approx((230 + 150) / 2)
    assert by.loc["syn", "preempted"] == pytest.approx((255 - 230 + 170 - 150) / 2)
    mid = by.loc["mid_write"]
    assert (mid["total"], mid["wake"], mid["queue"], mid["decode"], mid["engine"],
            mid["encode"], mid["send"]) == pytest.approx((190, 20, 1, 19, 70, 30, 50))
    tail = by.loc["tail_write"]
    assert tail["total"] == pytest.approx(140)                  # 510 -> data 650
    assert (tail["encode"], tail["send"]) == pytest.approx((20, 10 + 40))
    assert tail["cpu"] == pytest.approx(650 - 520 - 10)
    assert tail["preempted"] == pytest.approx(10)
    assert by.loc["answer", "total"] == pytest.approx(130)     # until handled
    assert by.loc["answer", "finish"] == pytest.approx(10)
    assert by.loc["synack", "total"] == pytest.approx(60)
    for stage in bd["stage"]:                                    # the segments add up
        row = by.loc[stage]
        if row["n"] == 1:
            assert sum(row[k] for k in tbb.SEGMENTS) == pytest.approx(row["total"])
    # a SYN-ACK that came while the agent was still awake (after its select returned, in
    # the same drain): no wake-up, its queue from its arrival on
    late = tbb.first_packet_breakdown(
        [_rec("synack", 950, 900, [("read", 980, 0), ("sent data", 1000, 15),
                                   ("done", 1001, 16)])], "maglev").set_index("stage")
    assert (late.loc["synack", "wake"], late.loc["synack", "queue"],
            late.loc["synack", "total"]) == pytest.approx((0, 30, 50))
    rows = {r.metric: r.value for r in tbb.first_packet_stages(bd)}
    assert rows["first_packet_us_chain_syn"] == pytest.approx(245)
    assert rows["first_packet_us_chain_syn_wake"] == pytest.approx(30)
    assert rows["first_packet_us_chain_synack_cpu"] == pytest.approx(45)
    assert len(rows) == 15
    empty = tbb.first_packet_breakdown([], "maglev")
    assert empty.empty and tbb.first_packet_stages(empty) == []
    assert "syn" in tbb.format_breakdown(bd) and "no first-packet" in tbb.format_breakdown(empty)


def test_pooled_rounds_give_the_percentiles_of_all_samples():
    c = {}
    tbb.pool(c, "maglev", {"ms": [1.0, 2.0], "errors": 0, "n": 2})
    tbb.pool(c, "maglev", {"ms": [3.0], "errors": 1, "n": 2})
    assert c["maglev"] == {"ms": [1.0, 2.0, 3.0], "errors": 1, "n": 4, "frames": 0}
    rows = {r.metric: r for r in tbb.connect_rows(c)}
    assert rows["connect_ms_p50_maglev"].value == 2.0


def test_the_first_packet_pair_runs_in_turn():
    groups = ["datapath", "maglev", "chain-L1", "chain-L3", "chain"]
    assert tbb.schedule(groups, 3) == [
        ("datapath", 0), ("maglev", 1), ("chain-L3", 1), ("maglev", 2), ("chain-L3", 2),
        ("maglev", 3), ("chain-L3", 3), ("chain-L1", 0), ("chain", 0)]
    assert tbb.schedule(groups, 1) == [(g, 0) for g in groups]
    assert tbb.schedule(["maglev", "chain"], 3) == [("maglev", 0), ("chain", 0)]
    assert tbb.schedule(["maglev", "chain-L3", "chain-L3-patent"], 2) == [
        ("maglev", 1), ("chain-L3", 1), ("chain-L3-patent", 1),
        ("maglev", 2), ("chain-L3", 2), ("chain-L3-patent", 2)]


def test_the_patent_variant_has_its_own_first_packet_overhead_and_frame_counts():
    c = {"maglev": samples(1.2, 3.0), "L3_N3": samples(2.0, 5.0),
         "L3_N3_patent": {**samples(2.6, 6.0), "frames": 606}}
    rows = {r.metric: r for r in tbb.connect_rows(c)}
    assert rows["first_packet_overhead_ms_p50"].value == pytest.approx(0.8)
    assert rows["first_packet_overhead_ms_p50_patent"].value == pytest.approx(1.4)
    assert rows["chain_frames_per_conn_L3_N3_patent"].value == pytest.approx(6.0)
    assert "chain_frames_per_conn_L3_N3" not in rows      # not measured: no row
    assert rows["first_packet_hops_L3_N3"].value == 2
    assert rows["first_packet_hops_L3_N3_patent"].value == pytest.approx(3 + 1 - 1 / 3)
    assert tbb.first_packet_hops("patent", 8, 3) == pytest.approx(3.875)
    assert tbb.first_packet_hops("steered", 3, 1) == 0


def test_target_lines():
    rows = [Row("datapath_pps", 160.0, "packets/s", "bare", 100.0),
            Row("first_packet_overhead_ms_p50", 0.7, "ms", "maglev", 1.2),
            Row("lb_kill_restore_s", 0.6, "s"),
            Row("entries_held", math.nan, "entries"),
            Row("setup_rate_cps", 200, "connections/s"),
            Row("agent_cpu_per_gbit_fastpath", 0.2, "CPU s/Gbit", "off", 1.0),
            Row("datapath_pps_fastpath_off", 70.0, "packets/s", "bare", 100.0)]
    lines = tbb.target_lines(rows)
    assert len(lines) == 5
    assert "datapath_pps" in lines[0] and lines[0].endswith("met")
    assert lines[1].endswith("MISSED") and lines[2].endswith("met")
    assert "agent_cpu_per_gbit_fastpath" in lines[3] and lines[3].endswith("MISSED")
    assert lines[4].endswith("met")


def test_parse_groups():
    assert cli.parse_groups(None, tbb.GROUPS) == list(tbb.GROUPS)
    assert cli.parse_groups("entries, datapath", tbb.GROUPS) == ["datapath", "entries"]
    with pytest.raises(ValueError, match="valid: datapath"):
        cli.parse_groups("datapath,nope", tbb.GROUPS)
    with pytest.raises(ValueError):
        cli.parse_groups(",", tbb.GROUPS)


def test_bad_group_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--only", "nope"])
    assert e.value.code == 2
    assert "unknown group(s) nope" in capsys.readouterr().err


def test_save_writes_csv_meta_and_latest(tmp_path):
    from bench import new_run_dir
    rows = [Row("datapath_pps", 104905.2, "packets/s", "bare AF_PACKET forwarder", 144425.0),
            Row("lb_kill_restore_s", 0.563, "s"), Row("lb_kill_restore_s_never", math.inf, "s")]
    first = new_run_dir(tmp_path, "r1")
    cli.save(first, rows, {"machine": cli.machine(), "failures": []})
    second = new_run_dir(tmp_path, "r1")
    path = cli.save(second, rows[:1], {"machine": cli.machine(), "failures": ["x: y"]})
    assert path == second / "bench.csv" and second.name == "r1-2"
    assert os.readlink(tmp_path / "latest") == "r1-2"
    with path.open() as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == COLUMNS
    assert lines[1] == ["datapath_pps", "104905", "packets/s", "bare AF_PACKET forwarder",
                        "144425", "0.7264"]
    back = read_csv(first / "bench.csv")
    assert [r.metric for r in back] == [r.metric for r in rows] and back[2].value == math.inf
    meta = json.loads((second / "meta.json").read_text())
    assert meta["failures"] == ["x: y"]
    assert meta["machine"]["nproc"] == os.cpu_count() and meta["machine"]["kernel"]


def test_machine_names_the_cpu():
    info = cli.machine()
    assert info["cpu"] != "unknown" and info["nproc"] >= 1


# --- traffic tools -------------------------------------------------------------------------

def test_udp_frame_is_valid_ipv4_udp():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    frame = traffic.udp_frame(bytes.fromhex("020000000201"), bytes.fromhex("020000000101"),
                              "10.0.1.1", "10.0.2.1", 40000, 9)
    assert len(frame) == 60
    pkt = Ether(frame)
    assert pkt[IP].src == "10.0.1.1" and pkt[IP].dst == "10.0.2.1"
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (40000, 9, 8)
    rebuilt = Ether(frame)
    del rebuilt[IP].chksum
    assert Ether(bytes(rebuilt))[IP].chksum == pkt[IP].chksum
    assert traffic.ip_checksum(bytes(pkt[IP])[:20]) == 0        # a valid header sums to 0xffff


def test_spray_tuples_are_distinct():
    tuples = {traffic.spray_tuple(i, 10000, 50000, 30000) for i in range(120_000)}
    assert len(tuples) == 120_000
    assert traffic.spray_tuple(50_001, 10000, 50000, 30000) == (10001, 30001)
    assert all(1 <= p <= 65535 for t in tuples for p in t)


def _tool(args, timeout=30):
    return subprocess.run([PY, "-m", "bench.traffic", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tcp_server(tmp_path):
    port = _free_port()
    out, ready = tmp_path / "server.json", tmp_path / "ready"
    proc = subprocess.Popen([PY, "-m", "bench.traffic", "server", "--port", str(port),
                             "--ready", str(ready), "--out", str(out)], cwd=ROOT)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield port, proc, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_connect_and_rate_tools_against_the_server(tmp_path, tcp_server):
    port, server, server_out = tcp_server
    out = tmp_path / "connect.json"
    p = _tool(["connect", "--dst-ip", "127.0.0.1", "--port", str(port), "--count", "5",
               "--interval", "0.001", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    ms, errors = m.connect_times(json.loads(out.read_text()))
    assert len(ms) == 5 and errors == 0
    out = tmp_path / "rate.json"
    p = _tool(["rate", "--dst", f"127.0.0.1:{port}", "--dst", f"127.0.0.1:{_free_port()}",
               "--rate", "40", "--duration", "0.5", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    outcome = m.rate_outcome([doc])
    assert outcome["attempted"] == 20
    assert outcome["ok"] == 10                                  # every other one: nobody listens
    assert outcome["reasons"] == {os.strerror(111): 10}
    assert all(c[1] for c in doc["conns"])                      # source ports are recorded
    server.terminate()
    server.wait(10)
    assert json.loads(server_out.read_text())["accepted"] == 15


def _wait_udp_bound(ports, timeout=10.0):
    """Poll until a process listens on every UDP port (the receiver is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Hlun"], capture_output=True, text=True).stdout
        if all(f":{p} " in out for p in ports):
            return
        time.sleep(0.02)
    pytest.fail(f"no receiver bound UDP ports {ports} within {timeout} s")


def test_probe_tools_show_no_outage_on_a_steady_path(tmp_path):
    ports = [_free_port(), _free_port()]
    recv_out, send_out = tmp_path / "recv.json", tmp_path / "send.json"
    recv = subprocess.Popen([PY, "-m", "bench.traffic", "probe-recv", "--duration", "2.5",
                             *[f"--port={p}" for p in ports], "--out", str(recv_out)], cwd=ROOT)
    _wait_udp_bound(ports)
    sport = _free_port()
    p = _tool(["probe-send", "--duration", "1.0", "--interval", "0.01",
               f"--flow=127.0.0.1:{sport}:{ports[0]}", f"--flow=127.0.0.1:{sport + 1}:{ports[1]}",
               "--out", str(send_out)])
    assert p.returncode == 0, p.stderr
    assert recv.wait(20) == 0
    sent = json.loads(send_out.read_text())
    arrivals = json.loads(recv_out.read_text())["arrivals"]
    assert sorted(arrivals) == sorted([f"127.0.0.1:{sport}->{ports[0]}",
                                       f"127.0.0.1:{sport + 1}->{ports[1]}"])
    assert all(len(a) == sent["sent_per_flow"] for a in arrivals.values())
    middle = sent["t0"] + 0.5
    out = m.restore_time(arrivals, middle, gap_s=0.5)
    assert (out["live_flows"], out["interrupted_flows"], out["restore_s"]) == (2, 0, 0.0)


def test_tool_usage_errors():
    p = _tool(["rate", "--dst", "127.0.0.1:1", "--rate", "0", "--duration", "1", "--out", "/dev/null"])
    assert p.returncode == 2 and "--rate must be > 0" in p.stderr
    p = _tool(["nope"])
    assert p.returncode == 2


# --- the bare forwarder (root: a scratch network namespace) --------------------------------

def _ns(ns, *cmd, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          check=True, **kw)


@pytest.mark.root
def test_forwarder_rewrites_the_destination_mac(tmp_path):
    ns = f"benchtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ns(ns, "ip", "link", "add", "fw0", "type", "veth", "peer", "name", "tx0")
        _ns(ns, "ip", "link", "set", "fw0", "address", "02:00:00:00:03:01")
        for intf in ("fw0", "tx0"):
            _ns(ns, "ip", "link", "set", intf, "up")
        out = tmp_path / "fwd.json"
        fwd = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-m", "bench.forwarder",
                                "--intf", "fw0", "--dst-mac", "02:00:00:00:04:01", "--warmup",
                                "0", "--duration", "3", "--out", str(out)], cwd=ROOT)
        # send 200 frames from the peer, catch what comes back with the new MAC
        code = (
            "import socket, time, sys\n"
            "from bench.traffic import udp_frame\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))\n"
            "s.bind(('tx0', 0)); s.settimeout(0.2)\n"
            "mine = s.getsockname()[4][:6]\n"
            "f = udp_frame(bytes.fromhex('020000000301'), mine, '10.0.1.1', '10.0.2.1', 4000, 9)\n"
            "time.sleep(1.0)\n"
            "for _ in range(200): s.send(f)\n"
            "back = 0; end = time.monotonic() + 1.5\n"
            "while time.monotonic() < end:\n"
            "    try: b = s.recv(2048)\n"
            "    except socket.timeout: continue\n"
            "    if b[:6] == bytes.fromhex('020000000401') and b[6:12] == bytes.fromhex('020000000301')"
            " and b[12:] == f[12:]: back += 1\n"
            "print(back)\n")
        p = _ns(ns, PY, "-c", code, cwd=ROOT, timeout=30)
        assert fwd.wait(20) == 0
        doc = json.loads(out.read_text())
        assert int(p.stdout) == 200
        assert doc["total"] == 200 and doc["forwarded"] == 200 and doc["window_s"] > 0
    finally:
        subprocess.run(["ip", "netns", "del", ns])


@pytest.mark.root
def test_the_datapath_group_measures_the_lb_host_at_its_link_and_through_the_switch(tmp_path):
    res, logged = tbb.Results(), []
    tbb.run_group("datapath", tmp_path, tbb.QUICK, res, logged.append)
    rows = {r.metric: r for r in res.rows}
    assert set(rows) == {"datapath_pps", "datapath_pps_seen_at_gw", "datapath_offered_pps",
                         "datapath_pps_through_gw"}
    assert all(r.value > 0 and r.baseline_value > 0 for r in rows.values())
    # at the link, the kernel forwards the flood in the sender's own context: it keeps up
    # with what is offered (Python, the agent's path or the bare forwarder, does not), and
    # what it forwards comes back on the link
    at_link = rows["datapath_pps"]
    assert at_link.value >= 0.8 * rows["datapath_offered_pps"].value
    assert rows["datapath_pps_seen_at_gw"].value >= 0.8 * at_link.value
    assert sum("at the link" in line for line in logged) == 2       # agent, bare forwarder
    assert sum("through gw" in line for line in logged) == 2


def test_top_frames_of_collapsed_stacks():
    raw = ("main (lb.py:1);run (lb.py:96) 60\n"
           "main (lb.py:1);run (lb.py:103);decode (wire.py:451) 30\n"
           "main (lb.py:1);run (lb.py:103);encode (wire.py:437) 10\n"
           "garbage line\n")
    total, own, incl = m.top_frames(raw, 2)
    assert total == 100
    assert own == [(60.0, "run (lb.py:96)"), (30.0, "decode (wire.py:451)")]
    assert incl[0] == (100.0, "main (lb.py:1)") and incl[1] == (60.0, "run (lb.py:96)")
    assert m.top_frames("") == (0, [], [])


def test_a_group_that_fails_midway_keeps_what_it_measured(monkeypatch, tmp_path):
    def group(g, run_dir, plan, res, log, samples=None, tb_name=None):
        raise tbb.BenchError("arrivals: the cluster did not recover",
                             [tbb.Row("max_arrival_cps", 1300, "connections/s")])
    monkeypatch.setattr(tbb, "run_group", group)
    readings = iter([(1000, 10), (1000, 10), (1400, 110), (1400, 110)])
    monkeypatch.setattr(tbb, "host_cpu", lambda: next(readings))
    logged = []
    res = tbb.run_all(["arrivals"], tmp_path, tbb.QUICK, log=logged.append)
    assert [r.metric for r in res.rows] == ["max_arrival_cps", "host_steal_share"]
    assert res.rows[0].value == 1300 and res.rows[1].value == pytest.approx(0.25)
    assert res.failures == ["arrivals: arrivals: the cluster did not recover"]
    assert any("25.0% of the CPU time stolen by the host" in line for line in logged)


def test_steal_time_from_proc_stat():
    stat = ("cpu  100 5 50 800 10 0 5 30 7 0\n"       # guest (7) is inside user already
            "cpu0 50 2 25 400 5 0 2 15 3 0\nintr 12345\n")
    assert m.cpu_steal(stat) == (1000, 30)
    assert m.steal_share((1000, 30), (1200, 80)) == pytest.approx(0.25)
    assert math.isnan(m.steal_share((1000, 30), (1000, 30)))
    for bad in ("", "cpu0 1 2 3 4 5 6 7 8\n", "cpu  1 2 3 4 5 6 7\n", "cpu  a b c d e f g h\n"):
        with pytest.raises(m.ParseError):
            m.cpu_steal(bad)
