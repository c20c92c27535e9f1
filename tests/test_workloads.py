"""Planning of real-application workloads (scenarios.workloads): pure, no root."""
import pytest

from scenarios import registry, workloads
from scenarios.workloads import AppBatch

CLIENTS, SERVERS = ["c1", "c2", "c3"], ["s1", "s2"]


def test_plan_is_seeded_and_ports_are_unique():
    batches = registry.get("real-traffic").apps
    a = workloads.plan_apps(batches, CLIENTS, SERVERS, seed=3)
    assert a == workloads.plan_apps(batches, CLIENTS, SERVERS, seed=3)
    assert a != workloads.plan_apps(batches, CLIENTS, SERVERS, seed=4)
    assert len(a) == sum(b.count for b in batches)
    assert len({x["client_port"] for x in a}) == len(a)
    assert len({x["conn_id"] for x in a}) == len(a)
    assert [x["start_s"] for x in a] == sorted(x["start_s"] for x in a)
    kinds = {x["kind"] for x in a}
    assert kinds == set(workloads.KINDS)
    for x in a:
        assert x["proto"] == ("udp" if x["kind"].startswith("udp") else "tcp")
        assert x["client"] in CLIENTS and x["server"] in SERVERS


def test_client_commands_name_the_planned_connection():
    for app in workloads.plan_apps(registry.get("real-traffic").apps, CLIENTS, SERVERS, 1):
        cmd = workloads.client_command(app, "/tmp/out.jsonl")
        assert cmd[1:3] == ["-m", "agents.apps"]
        assert cmd[cmd.index("--cport") + 1] == str(app["client_port"])
        assert cmd[cmd.index("--out") + 1] == "/tmp/out.jsonl"
        assert any(app["server_ip"] in part for part in cmd)
        assert any(str(app["server_port"]) in part for part in cmd)


def test_bad_batches_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="valid kinds: http_short"):
        AppBatch("ftp", 1, 0.0)
    with pytest.raises(ValueError, match="unknown option.*idle.*valid: requests, idle_s"):
        AppBatch("http_keepalive", 1, 0.0, options={"idle": 3})


def test_scaling_scales_waits_but_not_sizes():
    b = AppBatch("http_keepalive", 2, 4.0, 2.0, {"idle_s": 10.0})
    s = workloads.scaled(b, 0.5)
    assert (s.start_s, s.spread_s, s.options["idle_s"]) == (2.0, 1.0, 5.0)
    assert s.options.get("requests", 3) == 3
    assert workloads.expected_s(s) == pytest.approx(5.0 * 2 + 1.0)
    assert workloads.expected_s(AppBatch("http_download", 1, 0.0, options={"rate": "1m"})) \
        == pytest.approx(2.0)


def test_outcomes_join_by_client_port_and_missing_ones_are_not_completed():
    planned = workloads.plan_apps((AppBatch("halfclose", 2, 0.0, 1.0),), CLIENTS, SERVERS, 1)
    done = {"client_port": planned[0]["client_port"], "start": 10.0, "end": 14.5,
            "completed": True, "bytes": 20000, "error": ""}
    rows = workloads.outcomes(planned, [done, {"garbage": 1}])
    assert [r["conn_id"] for r in rows] == [p["conn_id"] for p in planned]
    assert rows[0]["completed"] and rows[0]["bytes"] == 20000
    assert rows[0]["duration_s"] == pytest.approx(4.5)
    assert not rows[1]["completed"] and "no outcome" in rows[1]["error"]


def test_real_traffic_scenario_needs_its_spares_and_scales():
    s = registry.get("real-traffic")
    assert sum(e.action == "add_nf" for e in s.events) <= s.params["spare_nfs"]
    half = s.scaled(0.5)
    assert half.traffic_s < s.traffic_s
    assert [a.start_s for a in half.apps] == [a.start_s * 0.5 for a in s.apps]


def test_servers_take_the_options_of_the_plan():
    planned = workloads.plan_apps(
        (workloads.scaled(AppBatch("halfclose", 1, 0.0, options={"pause_s": 3.0, "size": 500}),
                          0.5),
         AppBatch("udp_large", 1, 0.0, options={"reply_size": 2500})), CLIENTS, SERVERS, 1)
    cmds = workloads.server_commands("/www", "/run", planned)
    half, udp = cmds["halfclose"], cmds["udp"]
    assert half[half.index("--pause") + 1] == "1.5" and half[half.index("--size") + 1] == "500"
    assert udp[udp.index("--size") + 1] == "2500"
    client = workloads.client_command(next(a for a in planned if a["kind"] == "halfclose"), "o")
    assert client[client.index("--expect") + 1] == "500"
    assert all(a["client_port"] < 32768 for a in planned), "below the ephemeral ports"
