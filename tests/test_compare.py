"""scenarios.compare over run folders built here (flows.csv, summary.csv, iperf3 JSON)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from scenarios import compare as cmp
from scenarios import run as run_mod
from scenarios import report

TAB10 = {"nf1": (31, 119, 180), "nf2": (255, 127, 14), "nf3": (44, 160, 44)}


def make_run(root: Path, scenario: str, mode: str, run_id: str, flows: list[dict],
             events=(), mbit: float = 2.0) -> Path:
    """A run folder: flows = [{"id", "start", "nf", "moved_to", "ok"}]; iperf3 JSON per flow.

    Each flow has a control and a data connection; "moved_to" makes the data connection
    seen at a second NF (moved); "ok" False makes the flow broken.
    """
    run = root / scenario / run_id
    (run / "logs" / "iperf").mkdir(parents=True)
    rows = []
    for f in flows:
        base = {"scenario": scenario, "mode": mode, "run_id": run_id, "flow_id": f["id"],
                "proto": "tcp", "flow_proto": "tcp", "client": "c1", "server": "s1",
                "client_ip": "10.0.1.1", "server_ip": "10.0.2.1", "server_port": 5201,
                "start_s": f["start"], "duration_s": 4.0, "end_s": f["start"] + 4.0,
                "completed": f.get("ok", True), "error": "" if f.get("ok", True) else "reset",
                "invalid_by_nf": "", "invalid_packets": 0, "nf_bytes": 1000}
        seen = [f["nf"]] + ([f["moved_to"]] if f.get("moved_to") else [])
        rows.append(dict(base, role="control", client_port=40000, nf_first=f["nf"],
                         nfs_seen=f["nf"], packets_by_nf=f"{f['nf']}:10", packets=10,
                         moved=False, bytes=None, throughput_bps=None))
        rows.append(dict(base, role="data", client_port=20001, nf_first=f["nf"],
                         nfs_seen=";".join(seen),
                         packets_by_nf=";".join(f"{n}:100" for n in seen),
                         packets=100 * len(seen), moved=len(seen) > 1,
                         bytes=1e6 if f.get("ok", True) else None,
                         throughput_bps=mbit * 1e6 if f.get("ok", True) else None))
        doc = {"start": {"connected": [{"socket": 5, "local_port": 20001}]},
               "intervals": [{"sum": {"start": float(i), "end": i + 1.0,
                                      "bits_per_second": mbit * 1e6}} for i in range(4)],
               "end": {}}
        (run / "logs" / "iperf" / f"{f['id']}.json").write_text(json.dumps(doc))
    flows_df = pd.DataFrame(rows, columns=report.FLOW_COLUMNS)
    summary = report.build_summary(flows_df, events,
                                   {"scenario": scenario, "mode": mode, "run_id": run_id})
    report.write_results(run, flows_df, summary)
    return run


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    ev = [(2.0, "add_nf", "nf3")]
    make_run(root, "scale-out", "maglev", "20260101-100000-maglev", [
        {"id": "f001", "start": 0.0, "nf": "nf1", "moved_to": "nf3", "ok": False},
        {"id": "f002", "start": 0.5, "nf": "nf2", "moved_to": "nf3"},
        {"id": "f003", "start": 1.0, "nf": "nf2"},
        {"id": "f004", "start": 1.5, "nf": "nf1"}], ev, mbit=1.0)
    make_run(root, "scale-out", "chain", "20260101-090000-chain", [   # older chain run
        {"id": "f001", "start": 0.0, "nf": "nf3"}, {"id": "f002", "start": 0.5, "nf": "nf3"}], ev)
    make_run(root, "scale-out", "chain", "20260101-110000-chain", [   # newest chain run
        {"id": "f001", "start": 0.0, "nf": "nf1"}, {"id": "f002", "start": 0.5, "nf": "nf2"},
        {"id": "f003", "start": 1.0, "nf": "nf1"}, {"id": "f004", "start": 1.5, "nf": "nf2"}],
        ev)
    make_run(root, "nf-failure", "hash", "20260101-120000-hash", [
        {"id": "f001", "start": 0.0, "nf": "nf1", "ok": False},
        {"id": "f002", "start": 0.2, "nf": "nf2"}], [(1.0, "kill_nf", "nf1")])
    (root / "latest").symlink_to("nf-failure/20260101-120000-hash")
    return root


def _colors(png: Path) -> set:
    img = mpimg.imread(png)[:, :, :3]
    px = (img.reshape(-1, 3) * 255).round().astype(int)
    return {tuple(c) for c in np.unique(px, axis=0)}


def test_table_rows_and_csv(results, tmp_path, capsys):
    out = tmp_path / "cmp"
    table = cmp.compare([str(results)], str(out))
    printed = capsys.readouterr().out
    assert list(table.columns) == cmp.COLUMNS
    # latest symlink points at a run already found: no duplicate row
    assert [(r.scenario, r.mode, r.run_id) for r in table.itertuples()] == [
        ("nf-failure", "hash", "20260101-120000-hash"),
        ("scale-out", "chain", "20260101-090000-chain"),
        ("scale-out", "chain", "20260101-110000-chain"),
        ("scale-out", "maglev", "20260101-100000-maglev")]
    maglev = table.iloc[3]
    assert (maglev.flows, maglev.moved, maglev.broken) == (4, 2, 1)
    assert maglev.pcc_pct == pytest.approx(100.0 * (8 - 2) / 8)
    assert maglev.throughput_mbit == pytest.approx(1.0)
    chain = table.iloc[2]
    assert (chain.flows, chain.moved, chain.broken, chain.pcc_pct) == (4, 0, 0, 100.0)
    assert chain.throughput_mbit == pytest.approx(2.0)
    hash_ = table.iloc[0]
    assert (hash_.flows, hash_.moved, hash_.broken) == (2, 0, 1)
    back = pd.read_csv(out / "comparison.csv")
    assert list(back.columns) == cmp.COLUMNS
    assert back["moved"].tolist() == [0, 0, 0, 2]
    assert "20260101-100000-maglev" in printed and "throughput_mbit" in printed
    for line in printed.splitlines()[1:5]:
        assert len(line.split()) == 9


def test_plots_exist_and_show_the_right_run(results, tmp_path):
    out = tmp_path / "cmp"
    cmp.compare([str(results)], str(out))
    for name in ("nf_timeline.png", "moved.png", "throughput.png"):
        p = out / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 10_000, name
        assert len(_colors(p)) > 20, name          # not a blank canvas
    timeline = _colors(out / "nf_timeline.png")
    # the newest chain run used nf1 and nf2 only; the older one nf3 only
    assert TAB10["nf1"] in timeline and TAB10["nf2"] in timeline
    assert TAB10["nf3"] not in timeline
    moved = _colors(out / "moved.png")
    assert TAB10["nf2"] in moved                   # maglev's bar (mode color 1: orange)


def test_pick_run_prefers_newest_chain_then_newest(results):
    table = cmp.load_table(cmp.find_runs([results]))
    assert cmp.pick_run(table)["run_id"] == "20260101-110000-chain"
    no_chain = table[table["mode"] != "chain"]
    assert cmp.pick_run(no_chain)["run_id"] == "20260101-120000-hash"


def test_throughput_series_sums_flows_per_second(tmp_path):
    run = make_run(tmp_path, "s", "chain", "r1", [
        {"id": "f001", "start": 0.0, "nf": "nf1"}, {"id": "f002", "start": 1.5, "nf": "nf1"}])
    series = cmp.throughput_series(run)
    # f001 covers seconds 0..3, f002 (2 Mbit/s) starts at 1.5: intervals at 1.5, 2.5, 3.5, 4.5
    assert series.index.tolist() == [0, 1, 2, 3, 4]
    assert (series / 1e6).tolist() == pytest.approx([2.0, 4.0, 4.0, 4.0, 2.0])
    (run / "logs" / "iperf" / "f002.json").unlink()
    assert (cmp.throughput_series(run) / 1e6).tolist() == pytest.approx([2.0] * 4)


def test_events_from_summary(results):
    run = results / "scale-out" / "20260101-110000-chain"
    assert cmp._events(run) == [(2.0, "add_nf(nf3)")]


def test_a_single_run_folder_and_duplicates(results, tmp_path):
    run = results / "scale-out" / "20260101-100000-maglev"
    runs = cmp.find_runs([run, results / "scale-out", run / "summary.csv"])
    assert len(runs) == 3
    table = cmp.compare([str(run)], str(tmp_path / "one"))
    assert table["run_id"].tolist() == ["20260101-100000-maglev"]
    assert (tmp_path / "one" / "nf_timeline.png").is_file()


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no runs found"):
        cmp.compare([str(tmp_path / "empty")], str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="no such folder"):
        cmp.compare([str(tmp_path / "nope")], str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="no run folders given"):
        cmp.compare([], str(tmp_path / "out"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="not a run summary"):
        cmp.compare([str(bad)], str(tmp_path / "out"))


def test_command_line_compare(results, tmp_path):
    from scenarios.__main__ import main
    assert main(["compare", str(results), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "comparison.csv").is_file()
    with pytest.raises(SystemExit, match="no runs found"):
        main(["compare", str(tmp_path / "o"), "--out", str(tmp_path / "o2")])


def test_matrix_continues_past_a_failed_run(tmp_path):
    root = tmp_path / "runs"
    calls = []

    def runner(name, mode):         # stands in for run_scenario: writes a run or fails
        calls.append((name, mode))
        if (name, mode) == ("lb-failure", "hash"):
            raise RuntimeError("agent lb2 did not start")
        return make_run(root, name, mode, f"20260101-0000{len(calls):02d}-{mode}",
                        [{"id": "f001", "start": 0.0, "nf": "nf1"}])

    out = tmp_path / "matrix"
    table = run_mod.matrix(str(out), ["scale-out", "lb-failure"], ["chain", "hash"], runner,
                       log=lambda *a: None)
    assert calls == [("scale-out", "chain"), ("scale-out", "hash"),
                     ("lb-failure", "chain"), ("lb-failure", "hash")]
    status = pd.read_csv(out / "matrix.csv", keep_default_na=False)
    assert status["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert "agent lb2 did not start" in status["error"].iloc[3]
    assert len(table) == 3 and (out / "comparison.csv").is_file()
    assert sorted(zip(table["scenario"], table["mode"])) == [
        ("lb-failure", "chain"), ("scale-out", "chain"), ("scale-out", "hash")]


def test_matrix_with_nothing_produced_is_an_error(tmp_path):
    def runner(name, mode):
        raise RuntimeError("no OVS")
    with pytest.raises(SystemExit, match="no run of the matrix produced results"):
        run_mod.matrix(str(tmp_path / "m"), ["scale-out"], ["chain"], runner, log=lambda *a: None)
    assert (tmp_path / "m" / "matrix.csv").is_file()


def test_matrix_stops_when_another_run_holds_the_machine(tmp_path):
    from scenarios.testbed import TestbedBusy
    calls = []

    def runner(name, mode):
        calls.append((name, mode))
        if len(calls) == 1:
            return make_run(tmp_path / "runs", name, mode, "r1",
                            [{"id": "f001", "start": 0.0, "nf": "nf1"}])
        raise TestbedBusy("another testbed run is in progress (pid 1); only one network ...")

    run_mod.matrix(str(tmp_path / "m"), ["scale-out", "lb-join"], ["chain", "hash"], runner,
               log=lambda *a: None)
    assert len(calls) == 2
    status = pd.read_csv(tmp_path / "m" / "matrix.csv", keep_default_na=False)
    assert status["status"].tolist() == ["ok", "failed", "skipped", "skipped"]


def test_a_run_draws_its_own_timeline_and_throughput_with_the_dips(tmp_path):
    run = make_run(tmp_path, "scale-out", "chain", "r1",
                   [{"id": "f001", "start": 0.0, "nf": "nf1"},
                    {"id": "f002", "start": 0.5, "nf": "nf2", "moved_to": "nf3"}],
                   events=[(2.0, "add_nf", "nf3")])
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False)
    summary["dips"] = "2s add_nf(nf3): 25% 1s (2 flows)"
    summary.to_csv(run / "summary.csv", index=False)
    paths = cmp.plot_run(run, log=lambda *a: None)
    assert [p.name for p in paths] == ["nf_timeline.png", "throughput.png"]
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 500 and img.std() > 0.01


def test_a_plot_that_cannot_be_drawn_is_a_warning(tmp_path):
    warned = []
    (tmp_path / "r").mkdir()
    assert cmp.plot_run(tmp_path / "r", log=warned.append) == []
    assert len(warned) == 2 and all(w.startswith("warning:") for w in warned)


def test_an_interrupted_matrix_records_what_ran_and_stops(tmp_path):
    calls = []

    def runner(name, mode):
        calls.append((name, mode))
        if len(calls) == 2:
            raise KeyboardInterrupt("SIGTERM")
        return make_run(tmp_path / "runs", name, mode, f"r{len(calls)}",
                        [{"id": "f001", "start": 0.0, "nf": "nf1"}])
    with pytest.raises(KeyboardInterrupt):
        run_mod.matrix(str(tmp_path / "m"), ["scale-out", "lb-join"], ["chain", "hash"], runner,
                       log=lambda *a: None)
    assert len(calls) == 2
    status = pd.read_csv(tmp_path / "m" / "matrix.csv", keep_default_na=False)
    assert status["status"].tolist() == ["ok", "interrupted", "skipped", "skipped"]
    assert (tmp_path / "m" / "comparison.csv").is_file(), "what ran is compared"
