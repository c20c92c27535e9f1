"""End-to-end: short real scenarios in Mininet (OVS userspace, os-ken, agents, NFs, iperf3).

Each test runs a scenario at half its time scale and asserts from the CSVs it wrote.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from agents.chain import View
from agents.keys import PROTO_NAMES, flow_key

pytestmark = [pytest.mark.root, pytest.mark.slow]
PROTOS = {name: number for number, name in PROTO_NAMES.items()}


def _run(name: str, mode: str, overrides: dict | None = None
         ) -> tuple[Path, pd.DataFrame, pd.Series, dict]:
    from scenarios.run import run_scenario
    run_dir = run_scenario(name, mode, seed=1, time_scale=0.5, log=lambda *_: None,
                           overrides=overrides)
    flows = pd.read_csv(run_dir / "flows.csv", keep_default_na=False)
    summary = pd.read_csv(run_dir / "summary.csv").iloc[0]
    params = json.loads((run_dir / "params.json").read_text())
    return run_dir, flows, summary, params


def _nothing_left_behind() -> None:
    assert "gw" not in subprocess.run(["ovs-vsctl", "list-br"], capture_output=True,
                                      text=True).stdout.split()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "agents.lb" not in ps and "ryu_apps.launch" not in ps
    assert subprocess.run(["ip", "link", "show", "chainlb0"],
                          capture_output=True).returncode != 0, \
        "the LB cluster bridge is removed"


def _heads_own_decisions(run_dir: Path) -> None:
    """New connections were decided at the head of their chain (the node the gateway steered
    them to), and their first packets were forwarded by the tails."""
    agents = {p.name.split(".")[0]: json.loads(p.read_text())
              for p in (run_dir / "logs").glob("lb*.stats.json")}
    assert sum(a["engine"]["released"] for a in agents.values()) > 0, "tails forward first packets"
    headed = decided = 0
    for name, a in agents.items():
        assert sorted(m for m in a["steering"] if m) == sorted(a["members"])
        view = View(1, tuple(a["members"]), a["chain_len"], tuple(a["steering"]))
        log = pd.read_csv(run_dir / "logs" / f"{name}.decisions.csv")
        for text in log["key"]:
            proto, lo, _, hi = text.split(" ")[0], *text.split(" ")[1].partition("<->")
            (ip_lo, port_lo), (ip_hi, port_hi) = lo.rsplit(":", 1), hi.rsplit(":", 1)
            key = flow_key(ip_lo, ip_hi, PROTOS[proto], int(port_lo), int(port_hi))
            decided += 1
            headed += view.chain(key)[0] == name
    assert decided and headed / decided > 0.9, f"{headed} of {decided} decided at their head"


def _data_rows(flows: pd.DataFrame) -> pd.DataFrame:
    return flows[flows["role"] == "data"]


def test_scale_out_chain_moves_nothing_and_uses_the_new_nf():
    run_dir, flows, summary, params = _run("scale-out", "chain")
    planned = {f["flow_id"] for f in params["flows"]}
    assert set(flows[flows["origin"] == "planned"]["flow_id"]) == planned, \
        "flows.csv must hold every started flow"
    assert set(flows[flows["origin"] == "observed"]["proto"]) <= {"icmp"}, \
        "beyond the flows, only the testbed's reachability pings"
    data = _data_rows(flows)
    assert len(data) == len(planned)
    assert not flows["moved"].astype(str).eq("True").any(), flows[["flow_id", "packets_by_nf"]]
    assert int(summary["moved"]) == 0
    completed = data["completed"].astype(str).eq("True").mean()
    assert completed >= 0.95, data[["flow_id", "error"]]
    add_at = params["events"][0]["at_s"]
    late = data[data["start_s"].astype(float) > add_at]
    assert (late["nf_first"] == "nf4").any(), "the added NF carries new connections"
    assert not (data[data["start_s"].astype(float) < add_at]["nf_first"] == "nf4").any()
    for name in ("flows.csv", "summary.csv", "params.json", "timeline.csv"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir.parent.parent / "latest").resolve() == run_dir.resolve()
    for stats in (run_dir / "logs").glob("lb*.stats.json"):
        counts = json.loads(stats.read_text())["counts"]
        assert counts["cluster_rx"] > 0, f"{stats.name}: chain frames use the cluster network"
    _heads_own_decisions(run_dir)
    _nothing_left_behind()


def test_lb_failure_chain_keeps_every_connection_on_its_nf():
    run_dir, flows, summary, params = _run("lb-failure", "chain")
    assert int(summary["moved"]) == 0
    data = _data_rows(flows)
    assert data["completed"].astype(str).eq("True").mean() >= 0.95, data[["flow_id", "error"]]
    timeline = pd.read_csv(run_dir / "timeline.csv", keep_default_na=False)
    assert timeline["epoch"].astype(float).max() >= 2, "the controller removed the killed LB"
    assert not timeline["lbs"].iloc[-1].count("lb2"), "lb2 left the view"
    _nothing_left_behind()


def test_lb_restart_under_its_own_name_moves_nothing_and_every_node_syncs():
    """Two LB agents, one after the other, are killed and started again under their names
    while flows run (each new process is a new life of the name: its peers push it its part
    of the table), then the first is killed, removed by the controller and admitted again
    under its name (a later view names it anew). Nothing moves, and at the end every agent
    (its status over the control socket, written as stats at exit) is synced in the current
    view, the restarted ones in a later incarnation than their first."""
    run_dir, flows, summary, params = _run("lb-restart", "chain")
    assert int(summary["moved"]) == 0, flows[["flow_id", "packets_by_nf"]]
    data = _data_rows(flows)
    assert data["completed"].astype(str).eq("True").mean() >= 0.95, data[["flow_id", "error"]]
    assert [e["action"] for e in params["events"]] == ["restart_lb", "restart_lb", "readmit_lb"]
    timeline = pd.read_csv(run_dir / "timeline.csv", keep_default_na=False)
    assert timeline["epoch"].astype(float).max() >= 3, "lb2 was removed and admitted again"
    assert timeline["lbs"].iloc[-1].count("lb2:up") == 1
    agents = {p.name.split(".")[0]: json.loads(p.read_text())
              for p in (run_dir / "logs").glob("lb*.stats.json")}
    assert sorted(agents) == ["lb1", "lb2", "lb3", "lb4"]
    epochs = {a["epoch"] for a in agents.values()}
    assert len(epochs) == 1, {n: a["epoch"] for n, a in agents.items()}
    for name, a in agents.items():
        assert a["synced"] and sorted(a["members"]) == sorted(agents), (name, a["members"])
    first = {n: int(a["incarnation"]) for n, a in agents.items()}
    assert min(first["lb2"], first["lb3"]) > max(first["lb1"], first["lb4"]), \
        "the restarted agents are later lives"
    _nothing_left_behind()


CUSTOM = """
name = "e2e-custom"
description = "a custom file: two NFs join at the same time"
[topology]
lbs = 3
chain_len = 2
[[flows]]
count = 6
start_s = 0.0
spread_s = 1.0
duration_s = 8.0
rate_mbit = 1.0
[[events]]
at_s = 3.0
action = "add_nf"
[[events]]
at_s = 3.0
action = "add_nf"
"""


def test_a_custom_scenario_file_runs_with_two_seeds(tmp_path):
    """``python -m scenarios run --file F --seeds 1-2 --set flows=8``: one run per seed, the
    file's topology and the command line's sizes in params.json, two spare NFs for the two
    simultaneous add_nf events, nothing moved."""
    import sys
    f = tmp_path / "custom.toml"
    f.write_text(CUSTOM)
    r = subprocess.run([sys.executable, "-m", "scenarios", "run", "--file", str(f), "--seeds",
                        "1-2", "--set", "flows=8"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from scenarios.results import RESULTS
    runs = sorted((RESULTS / "e2e-custom").glob("*-chain"))[-2:]
    assert len(runs) == 2
    seeds = []
    for run_dir in runs:
        params = json.loads((run_dir / "params.json").read_text())
        seeds.append(params["seed"])
        assert params["testbed"]["lbs"] == 3 and params["testbed"]["chain_len"] == 2
        assert params["testbed"]["spare_nfs"] == 2 and params["overrides"] == {"flows": "8"}
        assert len(params["flows"]) == 8
        assert [e["action"] for e in params["events"]] == ["add_nf", "add_nf"]
        summary = pd.read_csv(run_dir / "summary.csv").iloc[0]
        assert int(summary["moved"]) == 0
        timeline = pd.read_csv(run_dir / "timeline.csv", keep_default_na=False)
        assert {"nf4:active", "nf5:active"} <= set(timeline["nfs"].iloc[-1].split(";")), \
            "both NFs joined at the same time"
    assert seeds == [1, 2]
    table = pd.read_csv(RESULTS / "latest-set" / "comparison.csv")
    (row,) = table.itertuples()
    assert (row.scenario, row.mode, row.n_runs, row.moved_mean) == ("e2e-custom", "chain", 2, 0)
    assert (RESULTS / "latest-set" / "runs.txt").read_text().split() == [str(r) for r in runs]
    _nothing_left_behind()


def test_scale_out_maglev_moves_connections():
    run_dir, flows, summary, params = _run("scale-out", "maglev")
    moved = flows[flows["moved"].astype(str).eq("True")]
    assert int(summary["moved"]) == len(moved) > 0, "stateless Maglev re-maps live connections"
    # Each move is the Maglev table's own: the connection's NFs are the one the table of the
    # three first NFs names and the one the table with nf4 names. Most moves go to nf4; a few
    # keys (about 1 in 4,000) change between two of the old NFs, as Maglev's tables do.
    from agents.keys import PROTO_NAMES, flow_key
    from agents.maglev import Maglev
    numbers = {name: number for number, name in PROTO_NAMES.items()}
    before, after = Maglev(["nf1", "nf2", "nf3"]), Maglev(["nf1", "nf2", "nf3", "nf4"])
    for m in moved.itertuples():
        key = flow_key(m.client_ip, m.server_ip, numbers[m.proto], int(m.client_port),
                       int(m.server_port))
        assert set(m.nfs_seen.split(";")) == {before.lookup(key), after.lookup(key)}, m
    assert moved["nfs_seen"].str.contains("nf4").mean() > 0.5
    _nothing_left_behind()


@pytest.mark.parametrize("fastpath", ["xdp", "off"])
def test_real_traffic_chain_moves_nothing_and_every_application_completes(fastpath):
    """nginx/curl, idle keep-alive, half-closed request/response, UDP larger than the MTU and
    ICMP errors across NF adds, a drain and an LB kill: no connection reaches two NFs, and
    every client finished, as on a direct path; with the fast path and without it."""
    run_dir, flows, summary, params = _run("real-traffic", "chain", {"fastpath": fastpath})
    apps = flows[flows["role"] == "app"]
    assert len(apps) == len(params["apps"]) > 0
    assert int(summary["moved"]) == 0, flows[flows["moved"].astype(str).eq("True")][
        ["flow_id", "role", "proto", "packets_by_nf", "related_packets"]]
    assert (apps["nfs_seen"] != "").all(), "every app connection is in the NFs' counters"
    failed = apps[~apps["completed"].astype(str).eq("True")]
    assert failed.empty, failed[["flow_id", "error", "packets_by_nf"]]
    by_id = {a["conn_id"]: a for a in params["apps"]}
    kinds = apps["flow_id"].map(lambda i: by_id[i]["kind"])
    probes = apps[kinds == "udp_probe"]
    assert (probes["related_packets"].astype(int) > 0).all(), \
        "the ICMP errors of the probes are counted as theirs"
    outcomes = [json.loads(line) for line in
                (run_dir / "logs" / "apps" / "outcomes.jsonl").read_text().splitlines()]
    big = [o for o in outcomes if o["app"] == "udp-client"]
    assert big and all(o["received"] == o["sent"] for o in big), big
    assert int(summary["broken"]) == 0
    agents = [json.loads(p.read_text()) for p in (run_dir / "logs").glob("lb*.stats.json")]
    assert sum(a["counts"]["fragments"] for a in agents) > 0
    assert sum(a["counts"]["icmp_errors"] for a in agents) > 0
    assert params["conntrack_timeouts"]["tcp_established"] == 432000
    assert summary["fastpath"] == params["testbed"]["fastpath"] == fastpath
    if fastpath == "xdp":      # most packets forwarded in the kernel, by every agent
        assert float(summary["lb_fast_pct"]) > 80, summary["lb_fast_pct"]
        assert all(a["fastpath"] == "xdp (generic)" for a in agents)
        assert sum(a["counts"]["fast_put"] for a in agents) >= len(params["flows"])
    else:
        assert float(summary["lb_fast_pct"]) == 0
        assert all(a["fastpath"] == "off" and a["counts"]["fast_tx"] == 0 for a in agents)
    _nothing_left_behind()


@pytest.mark.parametrize("mode", ["chain", "maglev"])
def test_arrivals_at_scale_keep_their_nf_only_in_chain_mode(mode):
    """Poisson arrivals (200/s at half time scale: about 1,600 connections, each held idle
    1.5 s, so hundreds are open at once) across an NF add and a drain: in chain mode every
    connection completes on the NF it started on; Maglev moves live ones, which break."""
    from scenarios.run import run_scenario
    run_dir = run_scenario("arrivals", mode, seed=1, time_scale=0.5, log=lambda *_: None,
                           overrides={"cps": "100"})
    flows = pd.read_csv(run_dir / "flows.csv", keep_default_na=False)
    summary = pd.read_csv(run_dir / "summary.csv").iloc[0]
    gen = json.loads((run_dir / "arrivals.json").read_text())
    conns = flows[flows["app"] == "arrivals"]
    assert 1300 < len(conns) == gen["planned"] < 1900
    assert gen["max_concurrent_per_client"] >= 40 and gen["max_late_ms"] < 500
    assert (conns["nfs_seen"] != "").all(), "every connection was seen at an NF"
    if mode == "chain":
        assert int(summary["moved"]) == 0 and int(summary["broken"]) == 0, gen["errors"]
        assert gen["completed"] == gen["planned"]
        assert conns["bytes"].astype(float).sum() > 0
    else:
        moved = conns[conns["moved"].astype(str).eq("True")]
        assert len(moved) >= 20, "Maglev re-maps live connections"
        # a moved one breaks (but one moved only at its closing FIN/ACKs has its bytes)
        assert moved["completed"].astype(str).eq("True").mean() < 0.1
    _nothing_left_behind()


def test_double_lb_failure_chain_loses_no_entry():
    """Two of five LB agents SIGKILLed 100 ms apart at L=3, then an NF joins: every key had
    a replica left, so no live connection is re-decided (none reaches the new NF), nothing
    moves or breaks, and the view ends without the two."""
    run_dir, flows, summary, params = _run("double-lb-failure", "chain")
    data = _data_rows(flows)
    assert int(summary["moved"]) == 0 and int(summary["broken"]) == 0
    add_at = next(e["at_s"] for e in params["events"] if e["action"] == "add_nf")
    early = data[data["start_s"].astype(float) < add_at]
    assert len(early) and not (early["nf_first"] == "nf4").any() and \
        not early["nfs_seen"].str.contains("nf4").any(), "an entry lost would re-decide"
    timeline = pd.read_csv(run_dir / "timeline.csv", keep_default_na=False)
    assert timeline["lbs"].iloc[-1] == "lb1:up;lb3:up;lb5:up"
    _nothing_left_behind()


def test_controller_failure_chain_keeps_every_connection_and_the_new_one_drives_changes():
    """The controller is SIGKILLed while flows run; its supervisor restarts it from its
    saved view. Connections established before and opened while it is down keep their NF,
    and the restarted controller (at a higher epoch) adds an NF that new flows use."""
    run_dir, flows, summary, params = _run("controller-failure", "chain")
    data = _data_rows(flows)
    assert int(summary["moved"]) == 0 and int(summary["broken"]) == 0
    assert data["completed"].astype(str).eq("True").all()
    kill_at = next(e["at_s"] for e in params["events"] if e["action"] == "kill_controller")
    down = summary["controller_outages"]
    rest_s = float(down.split("REST ")[1].split("s")[0])
    assert float(summary["controller_restore_s"]) < 10, down
    starts = data["start_s"].astype(float)
    while_down = data[(starts >= kill_at) & (starts < kill_at + rest_s)]
    assert len(while_down) > 0, (kill_at, rest_s, sorted(starts))
    assert (data["nf_first"] == "nf4").any(), "the restarted controller added nf4"
    before, after = (int(x) for x in down.split("epoch ")[1].split("->"))
    assert after > before
    state = json.loads((run_dir / "controller.state.json").read_text())
    assert state["epoch"] >= after and any(n["name"] == "nf4" for n in state["nfs"])
    _nothing_left_behind()


def test_cluster_partition_chain_goes_through_the_gateway_and_back():
    """lb2 loses the LB cluster network while its gateway link stays up: every node notices
    on its own (no hellos), the chain frames to and from lb2 take the gateway, nothing moves
    or breaks (an NF joins meanwhile), and once healed they take the cluster network again."""
    run_dir, flows, summary, params = _run("cluster-partition", "chain")
    data = _data_rows(flows)
    assert int(summary["moved"]) == 0 and int(summary["broken"]) == 0
    assert data["completed"].astype(str).eq("True").all()
    stats = {p.name.split(".")[0]: json.loads(p.read_text())
             for p in (run_dir / "logs").glob("lb*.stats.json")}
    lb2 = stats.pop("lb2")["counts"]
    assert (lb2["cluster_lost"], lb2["cluster_healed"]) == (3, 3) and lb2["via_gateway"] > 0
    for name, s in stats.items():
        c = s["counts"]
        assert (c["cluster_lost"], c["cluster_healed"]) == (1, 1), name
        assert c["via_gateway"] > 0 and s["via_gateway_to"] == [], name
    assert (data["nf_first"] == "nf4").any(), "the NF added while cut off is used"
    _nothing_left_behind()
