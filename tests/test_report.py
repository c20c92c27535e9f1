"""Report building (scenarios.report) from fixture data.

Fixtures (tests/fixtures/):
- iperf3_*.json: real ``iperf3 -J`` client outputs over loopback, -t 1 -b 1M: TCP, UDP, a refused
  connection, and a TCP run whose connection was blackholed mid-test (nftables drop);
- run_ns/: a real run through agents.nf in plain namespaces (tests/fixtures/make_run_fixture.py):
  f3 is moved from nf1 to nf2 mid-flight and breaks.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import math

import pytest

from scenarios import report as rp

FIX = Path(__file__).resolve().parent / "fixtures"
META = {"scenario": "unit", "mode": "chain", "run_id": "r1"}
C1, C2, S1 = "10.0.1.1", "10.0.1.2", "10.0.2.1"


def iperf(name: str) -> dict:
    return rp.load_iperf_json(FIX / f"iperf3_{name}.json")


def data_port(name: str) -> int:
    return iperf(name)["start"]["connected"][0]["local_port"]


def entry(src, dst, proto, sport, dport, packets, nbytes=None, invalid=0):
    return {"src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport,
            "packets": packets, "bytes": packets * 100 if nbytes is None else nbytes,
            "invalid": invalid}


def both(cip, sip, proto, cport, sport, fwd, rev, inv_fwd=0, inv_rev=0):
    """A connection's two per-direction NF entries."""
    return [entry(cip, sip, proto, cport, sport, fwd, invalid=inv_fwd),
            entry(sip, cip, proto, sport, cport, rev, invalid=inv_rev)]


def dump(nf, flows, invalid=0, dropped=0):
    return {"nf": nf, "flows": flows, "invalid": invalid, "dropped": dropped}


def planned(flow_id, client_ip, server_port, proto="tcp", start_s=0.0, client="c1"):
    return {"flow_id": flow_id, "client": client, "server": "s1", "client_ip": client_ip,
            "server_ip": S1, "server_port": server_port, "start_s": start_s,
            "duration_s": 1.0, "proto": proto}


@pytest.fixture
def scenario():
    """Four flows: tcp ok (moved data conn), udp ok, refused, broken, plus one with no output.

    Ports: data ports come from the real iperf3 fixtures; control ports are made up.
    """
    tcp, udp, broken = data_port("tcp_ok"), data_port("udp_ok"), data_port("tcp_broken")
    flows = [planned("a", C1, 5201), planned("b", C1, 5202, proto="udp", start_s=0.5),
             planned("c", C2, 5203, start_s=12.0, client="c2"), planned("d", C1, 5204, start_s=12.0),
             planned("e", C2, 5205, start_s=20.0, client="c2")]
    nf1 = (both(C1, S1, "tcp", 40001, 5201, 10, 9)            # a control
           + both(C1, S1, "tcp", tcp, 5201, 50, 40)           # a data ... then moved to nf2
           + both(C1, S1, "tcp", 40002, 5202, 10, 9)          # b control
           + [entry(C1, S1, "udp", udp, 5202, 5)]             # b data, forward only at nf1
           + both(C2, S1, "tcp", 40004, 5204, 1, 1)           # d control, refused (wrong ip!)
           + both(C1, S1, "tcp", 40005, 5204, 1, 1)           # d control, refused
           + [entry(C1, S1, "icmp", 0, 0, 2)]                 # a ping: matches no flow
           + both(C1, S1, "tcp", 40009, 9999, 3, 3))          # unknown server port
    nf2 = (both(C1, S1, "tcp", tcp, 5201, 60, 70, 60, 70)     # a data, all invalid at nf2
           + [entry(S1, C1, "udp", 5202, udp, 7)])            # b data, reverse only at nf2
    nf10 = (both(C2, S1, "tcp", 40003, 5203, 10, 9)           # c control
            + both(C2, S1, "tcp", broken, 5203, 30, 20))      # c data
    dumps = {"nf1": dump("nf1", nf1, dropped=2), "nf2": dump("nf2", nf2, invalid=130),
             "nf10": dump("nf10", nf10), "nf3": None}
    outputs = {"a": iperf("tcp_ok"), "b": iperf("udp_ok"), "c": iperf("tcp_broken"),
               "d": iperf("refused")}                          # e: no output at all
    events = [(10.0, "add-nf", "nf10"), (15.0, "drain", "nf1")]
    return flows, outputs, dumps, events, {"tcp": tcp, "udp": udp, "broken": broken}


def rows(df, flow_id):
    return {r["role"]: r for r in df[df["flow_id"] == flow_id].to_dict("records")}


# --- iperf3 documents ---------------------------------------------------------------------

def test_iperf_results_from_real_outputs():
    ok = rp.iperf_result(iperf("tcp_ok"), "tcp")
    assert ok.completed and ok.error == "" and 0.9 < ok.elapsed_s < 1.5
    (key, (nbytes, bps)), = ok.streams.items()
    assert key == ("tcp", data_port("tcp_ok")) and nbytes > 0 and 0.5e6 < bps < 2e6
    udp = rp.iperf_result(iperf("udp_ok"), "udp")
    assert udp.completed and list(udp.streams) == [("udp", data_port("udp_ok"))]
    refused = rp.iperf_result(iperf("refused"), "tcp")
    assert not refused.completed and "Connection refused" in refused.error
    assert refused.streams == {} and refused.elapsed_s is None
    broken = rp.iperf_result(iperf("tcp_broken"), "tcp")
    assert not broken.completed and broken.error
    assert broken.streams[("tcp", data_port("tcp_broken"))][0] == 0


def test_tcp_run_without_received_bytes_is_not_completed():
    doc = json.loads(json.dumps(iperf("tcp_ok")))
    doc["end"]["sum_received"]["bytes"] = 0
    res = rp.iperf_result(doc, "tcp")
    assert not res.completed and res.error == "no bytes received"


def test_load_iperf_json_turns_bad_files_into_errors(tmp_path):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "cut.json").write_text('{"start": {"connected": [')
    assert "empty" in rp.load_iperf_json(tmp_path / "empty.json")["error"]
    assert "unreadable" in rp.load_iperf_json(tmp_path / "cut.json")["error"]
    assert "no iperf3 output" in rp.load_iperf_json(tmp_path / "absent.json")["error"]
    assert rp.load_nf_dump(tmp_path / "absent.json") is None
    assert rp.load_nf_dump(tmp_path / "cut.json") is None


# --- flows.csv ----------------------------------------------------------------------------

def test_matching_roles_and_moved(scenario):
    flows, outputs, dumps, _, ports = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    a = rows(df, "a")
    assert set(a) == {"control", "data"}
    assert a["control"]["client_port"] == 40001 and a["data"]["client_port"] == ports["tcp"]
    assert a["control"]["packets_by_nf"] == "nf1:19" and not a["control"]["moved"]
    d = a["data"]
    assert d["moved"] and d["nfs_seen"] == "nf1;nf2"
    assert d["packets_by_nf"] == "nf1:90;nf2:130" and d["invalid_by_nf"] == "nf2:130"
    # nf2 saw more packets, but all invalid: nf1 accepted them, so nf1 was first
    assert d["nf_first"] == "nf1"
    assert d["packets"] == 220 and d["invalid_packets"] == 130
    assert d["bytes"] > 0 and d["throughput_bps"] > 0 and d["completed"]
    assert a["control"]["bytes"] != a["control"]["bytes"]           # NaN: not a data stream


def test_udp_flow_control_is_tcp_and_data_matched_in_either_direction(scenario):
    flows, outputs, dumps, _, ports = scenario
    b = rows(rp.build_flows(META, flows, outputs, dumps), "b")
    assert (b["control"]["proto"], b["data"]["proto"]) == ("tcp", "udp")
    assert b["data"]["flow_proto"] == "udp" and b["data"]["client_port"] == ports["udp"]
    assert b["data"]["packets_by_nf"] == "nf1:5;nf2:7" and b["data"]["moved"]
    assert b["data"]["nf_first"] == "nf2"       # UDP: no invalid signal, most packets wins


def test_incomplete_flows_and_their_errors(scenario):
    flows, outputs, dumps, _, ports = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    c = rows(df, "c")
    assert not c["data"]["completed"] and "Broken pipe" in c["data"]["error"]
    assert c["data"]["client_port"] == ports["broken"] and c["data"]["nf_first"] == "nf10"
    d = rows(df, "d")
    assert list(d) == ["control"]               # refused: no data connection was made
    assert d["control"]["client_port"] == 40005 and d["control"]["packets_by_nf"] == "nf1:2"
    assert not d["control"]["completed"] and "refused" in d["control"]["error"]
    assert d["control"]["end_s"] != d["control"]["end_s"]           # NaN: never ran
    e = rows(df, "e")                            # no iperf3 output, never seen by an NF
    assert list(e) == ["control"] and pd.isna(e["control"]["client_port"])
    assert e["control"]["nfs_seen"] == "" and e["control"]["nf_first"] == ""
    assert not e["control"]["completed"] and e["control"]["error"] == "no iperf3 output"
    assert not e["control"]["moved"]


def test_every_planned_flow_has_rows_and_columns(scenario):
    flows, outputs, dumps, _, _ = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    assert list(df.columns) == rp.FLOW_COLUMNS
    assert set(df[df["origin"] == "planned"]["flow_id"]) == {"a", "b", "c", "d", "e"}
    # the ping, the unknown server port, c2 -> port 5204 (d is c1's): one row each
    assert list(df[df["origin"] == "observed"]["flow_id"]) == ["o001", "o002", "o003"]
    assert set(df["origin"]) == {"planned", "observed"}
    assert (df["scenario"] == "unit").all() and (df["run_id"] == "r1").all()
    assert df["moved"].dtype == bool and df["completed"].dtype == "boolean"
    assert df[df["origin"] == "planned"]["completed"].notna().all()
    assert list(df[df["flow_id"] == "a"]["role"]) == ["control", "data"]


def test_missing_dump_of_the_only_nf_leaves_connections_unseen(scenario):
    flows, outputs, dumps, _, ports = scenario
    df = rp.build_flows(META, flows, outputs, dict(dumps, nf10=None))
    c = rows(df, "c")
    assert c["data"]["nfs_seen"] == "" and c["data"]["packets"] == 0
    assert c["data"]["client_port"] == ports["broken"]   # from iperf3, not from an NF
    assert pd.isna(c["control"]["client_port"])


def test_duplicate_flow_triples_and_bad_protos_are_rejected():
    with pytest.raises(ValueError, match="one server port per flow"):
        rp.build_flows(META, [planned("x", C1, 5201), planned("y", C1, 5201)], {}, {})
    with pytest.raises(ValueError, match="proto must be tcp or udp"):
        rp.build_flows(META, [planned("x", C1, 5201, proto="sctp")], {}, {})
    with pytest.raises(ValueError, match="lacks client, server"):
        rp.build_flows(META, [{"flow_id": "x"}], {}, {})


def test_unmatched_entries_are_counted(scenario):
    flows, _, dumps, _, _ = scenario
    _, unmatched = rp.match_connections(flows, dumps)
    # icmp ping, 2 entries to an unknown server port, 2 of c2 -> port 5204 (d is c1's)
    assert unmatched == 5


def test_first_nf_rules():
    assert rp.first_nf({}) == ""
    assert rp.first_nf({"nf2": {"packets": 9, "invalid": 9},
                        "nf1": {"packets": 3, "invalid": 0}}) == "nf1"
    assert rp.first_nf({"nf2": {"packets": 4, "invalid": 4},
                        "nf1": {"packets": 3, "invalid": 3}}) == "nf2"
    assert rp.first_nf({"nf10": {"packets": 3, "invalid": 0},
                        "nf2": {"packets": 3, "invalid": 0}}) == "nf2"


# --- summary.csv --------------------------------------------------------------------------

def test_summary_counts(scenario):
    flows, outputs, dumps, events, _ = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    s = rp.build_summary(df, events, META, dumps, flows).iloc[0]
    assert list(rp.build_summary(df, events, META).columns) == rp.SUMMARY_COLUMNS
    # 8 rows of planned flows (7 seen at an NF) and 3 observed rows of no planned flow
    assert (s["flows"], s["apps"], s["connections"], s["observed"]) == (5, 0, 11, 10)
    assert s["observed_unplanned"] == 3
    assert (s["moved"], s["moved_flows"], s["broken"]) == (2, 2, 3)
    assert s["pcc_pct"] == pytest.approx(80.0)           # (10 observed - 2 moved) / 10
    assert s["completed_pct"] == pytest.approx(40.0)
    assert (s["invalid"], s["dropped"]) == (130, 2)
    assert s["missing_dumps"] == "nf3" and s["unmatched_entries"] == 0   # all in some row
    assert s["nf_flows"] == "nf1:1;nf2:1;nf10:1"
    assert s["event_times"] == "10;15"
    assert s["events"] == "10s add-nf(nf10);15s drain(nf1)"
    # data connections by the flow's start time: a (nf1) and b (nf2) before 10 s, c (nf10)
    # between 10 and 15 s; d has no data connection, e was never seen
    assert s["nf_flows_by_phase"] == "<10s: nf1:1;nf2:1 | 10-15s: nf10:1 | >=15s: -"
    assert s["throughput_bps_mean"] > 0


def test_summary_without_events_or_connections():
    df = rp.build_flows(META, [planned("x", C1, 5201)], {}, {"nf1": dump("nf1", [])})
    s = rp.build_summary(df, []).iloc[0]
    assert (s["flows"], s["moved"], s["broken"], s["observed"]) == (1, 0, 1, 0)
    assert pd.isna(s["pcc_pct"]) and s["nf_flows_by_phase"] == "all: -"
    assert s["scenario"] == "unit" and s["events"] == ""


def test_summary_reports_the_fast_paths_share_and_setting():
    df = rp.build_flows(META, [planned("x", C1, 5201)], {}, {"nf1": dump("nf1", [])})
    s = rp.build_summary(df, [], {**META, "fastpath": "xdp"},
                         lb_counts={"forwarded": 30, "fast_tx": 970}).iloc[0]
    assert s["fastpath"] == "xdp" and s["lb_fast_pct"] == pytest.approx(97.0)
    assert pd.isna(rp.build_summary(df, [], lb_counts={"forwarded": 0, "fast_tx": 0})
                   .iloc[0]["lb_fast_pct"])


def test_events_accept_mappings_and_reject_garbage():
    evs = rp.normalize_events([{"time_s": 3, "name": "b"}, (1, "a", None)])
    assert evs == [(1.0, "a", ""), (3.0, "b", "")]
    with pytest.raises(ValueError, match="bad event"):
        rp.normalize_events([("soon", "x", "")])


# --- files and terminal ------------------------------------------------------------------

def test_write_and_read_back(tmp_path, scenario):
    flows, outputs, dumps, events, _ = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    summary = rp.build_summary(df, events, META, dumps, flows)
    fpath, spath = rp.write_results(tmp_path / "run", df, summary)
    assert fpath.name == "flows.csv" and spath.name == "summary.csv"
    back = rp.read_flows(fpath)
    assert list(back.columns) == rp.FLOW_COLUMNS and len(back) == len(df)
    assert back["moved"].tolist() == df["moved"].tolist()
    assert back["completed"].tolist() == df["completed"].tolist()
    assert back["packets_by_nf"].tolist() == df["packets_by_nf"].tolist()
    assert back["client_port"].isna().tolist() == df["client_port"].isna().tolist()
    s = pd.read_csv(spath)
    assert s.loc[0, "moved"] == 2 and s.loc[0, "pcc_pct"] == 80.0


def test_format_summary_fits_a_screen(scenario):
    flows, outputs, dumps, events, _ = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    one = rp.build_summary(df, events, META, dumps, flows)
    two = pd.concat([one, one.assign(mode="maglev", run_id="r2")], ignore_index=True)
    text = rp.format_summary(two)
    lines = text.splitlines()
    assert len(lines) < 24 and max(map(len, lines)) <= 120
    assert "PCC %" in lines[0] and "80.0" in lines[1] and "maglev" in text
    assert "3 of no planned flow or app" in text
    assert "missing NF dumps: nf3" in text and "10s add-nf(nf10)" in text
    assert rp.format_summary(one.iloc[0:0]) == "(no runs)"


# --- a real run through agents.nf --------------------------------------------------------

def test_real_namespace_run():
    d = FIX / "run_ns"
    meta = json.loads((d / "meta.json").read_text())
    flows = json.loads((d / "planned.json").read_text())
    outputs = {f["flow_id"]: rp.load_iperf_json(d / f"iperf_{f['flow_id']}.json") for f in flows}
    dumps = {nf: rp.load_nf_dump(d / f"{nf}.json") for nf in ("nf1", "nf2", "nf3")}
    df = rp.build_flows(meta, flows, outputs, dumps)
    by = {(r["flow_id"], r["role"]): r for r in df.to_dict("records")}
    assert set(by) == {("f1", "control"), ("f1", "data"), ("f2", "control"), ("f2", "data"),
                       ("f3", "control"), ("f3", "data"), ("f4", "control")}
    for key in (("f1", "data"), ("f2", "data")):
        assert by[key]["completed"] and not by[key]["moved"] and by[key]["nfs_seen"] == "nf1"
    assert by[("f2", "data")]["proto"] == "udp"
    moved = by[("f3", "data")]
    assert moved["moved"] and moved["nf_first"] == "nf1" and not moved["completed"]
    assert moved["invalid_by_nf"].startswith("nf2:")
    assert by[("f3", "control")]["moved"]
    assert "refused" in by[("f4", "control")]["error"]
    s = rp.build_summary(df, json.loads((d / "events.json").read_text()), meta, dumps,
                         flows).iloc[0]
    assert (s["flows"], s["moved"], s["moved_flows"], s["broken"]) == (4, 2, 1, 2)
    assert s["missing_dumps"] == "nf3" and s["unmatched_entries"] == 0
    assert s["nf_flows_by_phase"] == "<1.5s: nf1:2 | >=1.5s: nf1:1"


def test_roles_without_iperf_output():
    """No iperf3 JSON: a UDP flow's TCP connection is control, its UDP one data; a TCP flow
    with two unlisted TCP connections cannot be told apart."""
    flows = [planned("u", C1, 6001, proto="udp"), planned("t", C1, 6002)]
    nf1 = (both(C1, S1, "tcp", 41000, 6001, 5, 5) + both(C1, S1, "udp", 41001, 6001, 9, 1)
           + both(C1, S1, "tcp", 42000, 6002, 5, 5) + both(C1, S1, "tcp", 42001, 6002, 50, 40))
    df = rp.build_flows(META, flows, {}, {"nf1": dump("nf1", nf1)})
    u = rows(df, "u")
    assert (u["control"]["proto"], u["control"]["client_port"]) == ("tcp", 41000)
    assert (u["data"]["proto"], u["data"]["client_port"]) == ("udp", 41001)
    t = df[df["flow_id"] == "t"]
    assert sorted(t["role"]) == ["unknown", "unknown"] and not t["completed"].any()


def test_moved_unexpected_excludes_connections_of_a_killed_nf():
    import pandas as pd
    from scenarios.report import build_summary
    rows = [
        # flow, role, nf_first, nfs_seen, moved
        ("f1", "data", "nf2", "nf1;nf2", True),      # on the killed NF: expected to move
        ("f2", "data", "nf1", "nf1;nf3", True),      # on a healthy NF: must not move
        ("f3", "data", "nf3", "nf3", False),
    ]
    df = pd.DataFrame([{"scenario": "nf-failure", "mode": "chain", "run_id": "r", "flow_id": f,
                        "role": role, "nf_first": first, "nfs_seen": seen, "moved": moved,
                        "completed": True, "start_s": 0.0, "throughput_bps": 1e6}
                       for f, role, first, seen, moved in rows])
    summary = build_summary(df, [(4.0, "kill_nf", "nf2")]).iloc[0]
    assert summary["moved"] == 2
    assert summary["moved_unexpected"] == 1
    for event in [(4.0, "add_nf", "nf4"), (4.0, "drain_nf", "nf2"), (9.0, "remove_nf", "nf2")]:
        assert build_summary(df, [event]).iloc[0]["moved_unexpected"] == 2, event


# --- related ICMP errors, observed connections, app connections ----------------------------

C3, S2 = "10.0.1.3", "10.0.2.2"


def related(src, dst, proto, sport, dport, packets, nbytes=None):
    """An ICMP error counted by the inner tuple (the packet it is about, as it was sent)."""
    return {"src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport,
            "packets": packets, "bytes": packets * 70 if nbytes is None else nbytes}


def test_related_icmp_at_another_nf_makes_the_connection_moved():
    flows = [planned("u", C1, 6001, proto="udp"), planned("t", C1, 6002)]
    nf1 = (both(C1, S1, "tcp", 41000, 6001, 5, 5) + [entry(C1, S1, "udp", 41001, 6001, 9)]
           + both(C1, S1, "tcp", 42000, 6002, 5, 5))
    dumps = {"nf1": dict(dump("nf1", nf1),
                         related=[related(C1, S1, "tcp", 42000, 6002, 1)]),  # same NF: stays
             "nf2": dict(dump("nf2", []),        # port unreachable for u's data, at nf2
                         related=[related(C1, S1, "udp", 41001, 6001, 3)])}
    df = rp.build_flows(META, flows, {}, dumps)
    u = rows(df, "u")["data"]
    assert u["moved"] and u["nfs_seen"] == "nf1;nf2"
    assert u["packets_by_nf"] == "nf1:9;nf2:3" and u["related_packets"] == 3
    assert u["packets"] == 12 and u["nf_bytes"] == 900 + 210
    assert u["nf_first"] == "nf1"               # an ICMP error says nothing about the start
    assert not rows(df, "u")["control"]["moved"]
    t = rows(df, "t")["control"]
    assert not t["moved"] and t["packets_by_nf"] == "nf1:11" and t["related_packets"] == 1
    assert (df["origin"] == "planned").all()    # every entry claimed: no observed row
    s = rp.build_summary(df, [], META, dumps, flows).iloc[0]
    assert (s["moved"], s["moved_flows"], s["unmatched_entries"]) == (1, 1, 0)
    # an error about a reply (inner server -> client) belongs to the same connection
    dumps["nf2"]["related"] = [related(S1, C1, "udp", 6001, 41001, 2)]
    u = rows(rp.build_flows(META, flows, {}, dumps), "u")["data"]
    assert u["moved"] and u["packets_by_nf"] == "nf1:9;nf2:2"
    # only at nf1: not moved
    dumps["nf2"]["related"] = []
    dumps["nf1"]["related"].append(related(C1, S1, "udp", 41001, 6001, 3))
    u = rows(rp.build_flows(META, flows, {}, dumps), "u")["data"]
    assert not u["moved"] and u["packets_by_nf"] == "nf1:12" and u["related_packets"] == 3


def observed_dumps():
    nf1 = (both(C3, S2, "tcp", 45000, 80, 6, 5)           # c3 -> s2:80, both directions
           + both(C1, S1, "icmp", 0, 0, 2, 2)             # ping c1 <-> s1
           + [entry(S2, C1, "icmp", 0, 0, 1),             # echo s2 -> c1 only
              entry("192.168.7.7", C1, "udp", 53, 33000, 1)])   # outside the plan
    nf2 = [entry(S2, C3, "tcp", 80, 45000, 4, invalid=4)]       # the reply moved to nf2
    return {"nf1": dump("nf1", nf1, dropped=0), "nf2": dict(dump("nf2", nf2, invalid=4),
            related=[related(C3, S2, "tcp", 45000, 80, 1)])}


def test_observed_connections_one_row_per_connection_both_directions_merged():
    df = rp.build_flows(META, [], {}, observed_dumps())
    assert (df["origin"] == "observed").all() and (df["role"] == "observed").all()
    by = {(r["proto"], r["client_ip"], r["server_ip"]): r for r in df.to_dict("records")}
    assert len(by) == len(df) == 4
    web = by[("tcp", C3, S2)]
    assert (web["client"], web["server"], web["client_port"], web["server_port"]) == \
        ("c3", "s2", 45000, 80)
    assert web["packets_by_nf"] == "nf1:11;nf2:5" and web["invalid_by_nf"] == "nf2:4"
    assert web["related_packets"] == 1 and web["moved"] and web["nf_first"] == "nf1"
    ping = by[("icmp", C1, S1)]                       # both directions: the lower address
    assert (ping["client"], ping["server"], ping["client_port"], ping["server_port"]) == \
        ("c1", "s1", 0, 0)
    assert ping["packets"] == 4 and not ping["moved"]
    assert by[("icmp", S2, C1)]["client"] == "s2"     # one direction: its source
    dns = by[("udp", C1, "192.168.7.7")]              # the ephemeral port is the client's
    assert (dns["client"], dns["server"], dns["client_port"], dns["server_port"]) == \
        ("c1", "192.168.7.7", 33000, 53)
    for r in by.values():
        assert pd.isna(r["completed"]) and pd.isna(r["bytes"]) and pd.isna(r["start_s"])
        assert r["error"] == "" and r["flow_proto"] == r["proto"]
    # ids follow the tuples, whatever the order of the dumps and their entries
    order = [(r["flow_id"], r["client_ip"], r["server_ip"]) for r in df.to_dict("records")]
    assert [o[0] for o in order] == ["o001", "o002", "o003", "o004"]
    shuffled = {nf: dict(d, flows=list(reversed(d["flows"])))
                for nf, d in reversed(list(observed_dumps().items()))}
    again = rp.build_flows(META, [], {}, shuffled)
    assert [(r["flow_id"], r["client_ip"], r["server_ip"]) for r in again.to_dict("records")] \
        == order
    s = rp.build_summary(df, [], META, observed_dumps(), []).iloc[0]
    assert (s["flows"], s["connections"], s["observed"], s["observed_unplanned"]) == (0, 4, 4, 4)
    assert (s["moved"], s["broken"], s["unmatched_entries"]) == (1, 0, 0)
    assert s["pcc_pct"] == pytest.approx(75.0)


def app(conn_id, client_ip, client_port, server_ip, server_port, proto="tcp", completed=True,
        **kw):
    rec = {"app": "curl", "conn_id": conn_id, "client": "c1", "server": "s1",
           "client_ip": client_ip, "client_port": client_port, "server_ip": server_ip,
           "server_port": server_port, "proto": proto, "start_s": 2.0, "duration_s": 0.5,
           "completed": completed, "bytes": 1000, "error": "" if completed else "timeout"}
    return dict(rec, **kw)


def test_app_connections_joined_by_exact_5_tuple():
    flows = [planned("f1", C1, 5201)]
    apps = [app("a001", C1, 40001, S1, 80),
            app("a002", C1, 40002, S1, 7009, proto="udp", completed=False, duration_s=None,
                bytes=None, app="udp-probe"),
            app("a003", C1, 40003, S1, 5201)]          # shares the planned flow's triple
    nf1 = (both(C1, S1, "tcp", 40001, 80, 7, 6)
           + both(C1, S1, "tcp", 40009, 80, 3, 3)       # same hosts and port, not an app's
           + [entry(C1, S1, "udp", 40002, 7009, 3)]
           + both(C1, S1, "tcp", 40003, 5201, 2, 2) + both(C1, S1, "tcp", 30000, 5201, 4, 4))
    dumps = {"nf1": dump("nf1", nf1),
             "nf2": dict(dump("nf2", []), related=[related(C1, S1, "udp", 40002, 7009, 3)])}
    df = rp.build_flows(META, flows, {}, dumps, apps=apps)
    by = {r["flow_id"]: r for r in df.to_dict("records")}
    a1, a2, a3 = by["a001"], by["a002"], by["a003"]
    for r in (a1, a2, a3):
        assert r["origin"] == "planned" and r["role"] == "app"
    assert (a1["proto"], a1["flow_proto"], a1["client_port"], a1["server_port"]) == \
        ("tcp", "tcp", 40001, 80)
    assert a1["packets_by_nf"] == "nf1:13" and not a1["moved"] and a1["completed"]
    assert a1["bytes"] == 1000 and a1["end_s"] == 2.5 and a1["throughput_bps"] == 16000
    assert a2["packets_by_nf"] == "nf1:3;nf2:3" and a2["moved"] and a2["related_packets"] == 3
    assert not a2["completed"] and a2["error"] == "timeout"
    assert pd.isna(a2["end_s"]) and pd.isna(a2["bytes"]) and pd.isna(a2["throughput_bps"])
    assert a3["packets_by_nf"] == "nf1:4"               # its exact tuple, not the flow's
    assert rows(df, "f1")["control"]["client_port"] == 30000
    assert a2["app"] == "udp-probe" and rows(df, "f1")["control"]["app"] == "iperf3"
    obs = df[df["origin"] == "observed"]
    assert obs["app"].tolist() == [""]
    assert obs[["client_port", "server_port"]].values.tolist() == [[40009, 80]]
    s = rp.build_summary(df, [], META, dumps, flows, apps=apps).iloc[0]
    assert (s["flows"], s["apps"], s["connections"], s["observed_unplanned"]) == (1, 3, 5, 1)
    # f1 (no iperf3 output) and a002 are broken; a002 is the moved one
    assert (s["broken"], s["moved"], s["moved_flows"], s["unmatched_entries"]) == (2, 1, 1, 0)
    assert s["completed_pct"] == pytest.approx(50.0)
    # without the records the same entries are observed connections
    plain = rp.build_flows(META, flows, {}, dumps)
    assert (plain["role"] == "app").sum() == 0 and (plain["origin"] == "observed").sum() == 3


def test_bad_app_records_are_named():
    ok = app("a001", C1, 40001, S1, 80)
    cases = [({k: v for k, v in ok.items() if k != "client_port"},
              r"app record #0 \('a001'\) lacks client_port"),
             (dict(ok, client_port=0), r"'a001'\): field 'client_port' must be a port"),
             (dict(ok, client_port="40001"), "field 'client_port'"),
             (dict(ok, proto="sctp"), "field 'proto' must be tcp or udp"),
             (dict(ok, client_ip="c1"), "field 'client_ip' must be an IPv4 address"),
             (dict(ok, completed="yes"), "field 'completed' must be true or false"),
             (dict(ok, duration_s=-1), "field 'duration_s'"),
             (dict(ok, bytes=1.5), "field 'bytes'"),
             (dict(ok, start_s=None), "field 'start_s'"),
             (dict(ok, conn_id=""), "field 'conn_id'")]
    for rec, needle in cases:
        with pytest.raises(ValueError, match=needle):
            rp.build_flows(META, [], {}, {}, apps=[rec])
    with pytest.raises(ValueError, match=r"app record #1 \('a001'\): conn_id 'a001' is also"):
        rp.build_flows(META, [], {}, {}, apps=[ok, app("a001", C1, 40002, S1, 80)])
    with pytest.raises(ValueError, match="also the id of a planned flow"):
        rp.build_flows(META, [planned("a001", C1, 5201)], {}, {}, apps=[ok])
    with pytest.raises(ValueError, match="same 5-tuple"):
        rp.build_flows(META, [], {}, {}, apps=[ok, dict(ok, conn_id="a002")])
    with pytest.raises(ValueError, match="app record #0: expected a mapping"):
        rp.build_summary(rp.build_flows(META, [], {}, {}), [], META, {}, [], apps=["x"])


def test_load_apps_skips_and_counts_bad_lines(tmp_path):
    path = tmp_path / "apps.jsonl"
    lines = [json.dumps(app("a001", C1, 40001, S1, 80)), "", "[1, 2]",
             json.dumps(app("a002", C1, 40002, S1, 80)), '{"app": "curl", "conn_']
    path.write_text("\n".join(lines) + "\n")
    records, bad = rp.load_apps(path)
    assert [r["conn_id"] for r in records] == ["a001", "a002"] and bad == 2
    assert rp.load_apps(tmp_path / "absent.jsonl") == ([], 0)
    df = rp.build_flows(META, [], {}, {}, apps=records)
    assert list(df["flow_id"]) == ["a001", "a002"]


def test_completed_na_of_observed_rows_round_trips(tmp_path):
    flows = [planned("x", C1, 5201)]
    dumps = observed_dumps()
    df = rp.build_flows(META, flows, {}, dumps, apps=[app("a001", C1, 40001, S1, 80)])
    summary = rp.build_summary(df, [], META, dumps, flows)
    fpath, _ = rp.write_results(tmp_path, df, summary)
    back = rp.read_flows(fpath)
    assert back["completed"].dtype == "boolean"
    assert back["completed"].isna().tolist() == df["completed"].isna().tolist() == \
        [False, False] + [True] * 4
    assert back["completed"].tolist()[:2] == [False, True] and back["completed"].tolist() == \
        df["completed"].tolist()
    assert back["origin"].tolist() == df["origin"].tolist()
    assert back["related_packets"].tolist() == df["related_packets"].tolist()
    assert back["start_s"].dtype == "float64" and back["start_s"].isna().sum() == 4
    assert back["error"].tolist() == df["error"].tolist()
    # the summary of the table read back is the same
    again = rp.build_summary(back, [], META, dumps, flows)
    pd.testing.assert_frame_equal(again, summary)


def test_flows_csv_without_the_new_columns_reads_as_planned(tmp_path, scenario):
    flows, outputs, dumps, events, _ = scenario
    df = rp.build_flows(META, flows, outputs, dumps)
    old = df[df["origin"] == "planned"].drop(columns=["origin", "related_packets"])
    old = old.assign(completed=old["completed"].astype(bool))
    old.to_csv(tmp_path / "flows.csv", index=False)
    back = rp.read_flows(tmp_path / "flows.csv")
    assert list(back.columns) == rp.FLOW_COLUMNS
    assert (back["origin"] == "planned").all() and (back["related_packets"] == 0).all()
    assert back["completed"].tolist() == old["completed"].tolist()


def test_unmatched_entries_are_entries_no_row_holds():
    bad = {"src": C1, "dst": S1, "proto": "tcp", "dport": 80, "packets": 1, "bytes": 60}
    dumps = {"nf1": dict(dump("nf1", both(C1, S1, "tcp", 40001, 80, 2, 2) + [bad]),
                         related=[{"src": C1}])}
    df = rp.build_flows(META, [], {}, dumps)
    assert len(df) == 1
    assert rp.build_summary(df, [], META, dumps).iloc[0]["unmatched_entries"] == 2
    assert rp.match_connections([], dumps)[1] == 4       # 2 of no planned flow + 2 malformed
    # rows dropped from the table: their entries are no longer accounted for
    assert rp.build_summary(df.iloc[0:0], [], META, dumps).iloc[0]["unmatched_entries"] == 4
    assert pd.isna(rp.build_summary(df, [], META).iloc[0]["unmatched_entries"])


# --- the throughput dip of the flows running across an event ------------------------------

def _iperf_doc(rates):
    """An iperf3 document of 1 s intervals at ``rates`` (bits/s)."""
    return {"intervals": [{"sum": {"start": float(i), "end": float(i + 1),
                                   "bits_per_second": r}} for i, r in enumerate(rates)]}


def _dip_flow(fid, start, duration, port):
    return {"flow_id": fid, "client": "c1", "server": "s1", "client_ip": "10.0.1.1",
            "server_ip": "10.0.2.1", "server_port": port, "start_s": start,
            "duration_s": duration, "proto": "tcp"}


def test_event_dips_measure_depth_and_length_against_the_flows_own_rates():
    from scenarios.report import event_dips
    planned = [_dip_flow("f1", 0.0, 20.0, 5201), _dip_flow("f2", 0.0, 20.0, 5202),
               _dip_flow("late", 9.0, 10.0, 5203)]    # 1 s before the event: no baseline
    steady = [2e6] * 20
    hit = [1e6] * 10 + [0.0, 0.0] + [1e6] * 8          # f2 stalls 2 s after the event at 10 s
    iperf = {"f1": _iperf_doc(steady), "f2": _iperf_doc(hit), "late": _iperf_doc([9e9] * 10)}
    (d,) = event_dips(planned, iperf, [(10.0, "add_nf", "nf4")])
    assert d["flows"] == 2 and d["event"] == "10s add_nf(nf4)"
    assert d["depth_pct"] == pytest.approx(100 * (1 - 2e6 / 3e6), abs=0.1)   # f2's third lost
    assert d["dip_s"] == 2
    (calm,) = event_dips(planned, iperf, [(3.0, "add_nf", "")])     # its window ends at 9 s
    assert (calm["depth_pct"], calm["dip_s"]) == (0.0, 0)
    (none,) = event_dips(planned[:1], {"f1": _iperf_doc([2e6] * 4)}, [(10.0, "x", "")])
    assert none["flows"] == 0 and math.isnan(none["depth_pct"])


def test_the_summary_carries_the_worst_dip():
    from scenarios.report import build_flows, build_summary
    planned = [_dip_flow("f1", 0.0, 20.0, 5201)]
    iperf = {"f1": _iperf_doc([2e6] * 10 + [0.5e6] + [2e6] * 9)}
    meta = {"scenario": "s", "mode": "chain", "run_id": "r"}
    df = build_flows(meta, planned, iperf, {})
    row = build_summary(df, [(10.0, "add_nf", "nf4"), (15.0, "drain_nf", "nf1")], meta,
                        planned=planned, iperf=iperf).iloc[0]
    assert row["dip_depth_pct"] == 75.0 and row["dip_s"] == 1
    assert row["dips"] == "10s add_nf(nf4): 75% 1s (1 flows) | 15s drain_nf(nf1): -"
