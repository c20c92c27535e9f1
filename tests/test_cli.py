"""The interactive CLI: argument handling without Mininet, and a real `make cli` session."""
from __future__ import annotations

import cmd
import fcntl
import io
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from scenarios import cli
from scenarios import testbed
from scenarios.testbed import RUN_DIR
from topo.testbed import TestbedParams

ROOT = Path(__file__).resolve().parent.parent

VIEW = {"epoch": 3, "chain_len": 3, "mode": "chain", "steering": [3001, None, 3002],
        "lbs": [{"name": "lb1", "status": "up", "entries": 7, "reported_epoch": 3},
                {"name": "lb2", "status": "joining", "entries": None, "reported_epoch": 2}],
        "nfs": [{"name": "nf1", "state": "active"}, {"name": "nf2", "state": "draining"}]}


class FakeTestbed:
    """Records what the commands ask of the testbed (pure-logic stand-in, no Mininet)."""

    def __init__(self, tmp: Path):
        self.mode, self.params = "chain", TestbedParams()
        self.lbs, self.nfs = ["lb1", "lb2", "lb3", "lb4"], ["nf1", "nf2", "nf3"]
        self.logs = tmp / "logs"
        self.nf_dumps: dict = {}
        self.calls: list[tuple] = []
        self.refuse = None

    def rest(self, method, path, body=None):
        self.calls.append(("rest", method, path))
        if self.refuse:
            raise testbed.TestbedFailure(self.refuse)
        return VIEW

    def add_nf(self, name=""):
        self.calls.append(("add_nf",))
        self.nfs.append(f"nf{len(self.nfs) + 1}")
        return self.nfs[-1]

    def partition_lb(self, name):
        self.calls.append(("partition_lb", name))

    def heal_lb(self, name):
        self.calls.append(("heal_lb", name))

    def kill_controller(self, wait=True):
        self.calls.append(("kill_controller", wait))
        return {"epoch_before": 3, "rest_s": 1.2, "switch_s": 1.3, "agents_s": 1.5,
                "epoch_after": 4}

    def add_lb(self, name=""):
        self.calls.append(("add_lb",))
        self.lbs.append(f"lb{max(int(n[2:]) for n in self.lbs) + 1}")
        return self.lbs[-1]

    def drain_nf(self, name):
        self.calls.append(("drain_nf", name))
        if self.refuse:
            raise testbed.TestbedFailure(self.refuse)

    def remove_nf(self, name):
        self.calls.append(("remove_nf", name))

    def kill_nf(self, name):
        self.calls.append(("kill_nf", name))

    def kill_lb(self, name):
        self.calls.append(("kill_lb", name))
        self.lbs.remove(name)


@pytest.fixture
def shell(tmp_path):
    out = io.StringIO()
    tb = FakeTestbed(tmp_path)
    commands = cli.TestbedCommands(tb, tmp_path / "run", stdout=out)

    def run(line: str) -> str:
        out.seek(0)
        out.truncate()
        name, _, arg = line.partition(" ")
        getattr(commands, f"do_{name}")(arg)
        return out.getvalue()
    return commands, tb, run


@pytest.mark.parametrize("line, message", [
    ("drain", "usage: drain nfN"), ("drain lb1", "'lb1' is not an NF name"),
    ("drain nf9", "no NF 'nf9'; known: nf1, nf2, nf3"), ("drain nf1 nf2", "usage: drain nfN"),
    ("rmnf", "usage: rmnf nfN"), ("rmnf nf0", "'nf0' is not an NF name"),
    ("killnf x", "'x' is not an NF name"),
    ("killlb", "usage: killlb lbN"), ("killlb nf1", "'nf1' is not an LB name"),
    ("killlb lb7", "no LB 'lb7'; known: lb1, lb2, lb3, lb4"),
    ("restartlb", "usage: restartlb lbN"), ("restartlb nf1", "'nf1' is not an LB name"),
    ("table", "usage: table lbN"), ("table lb", "'lb' is not an LB name"),
    ("table lb9", "no LB 'lb9'"),
    ("addnf nf5", "addnf takes no argument"), ("addlb 2", "addlb takes no argument"),
    ("view all", "view takes no argument"),
    ("flows", "usage: flows N"), ("flows 0", "usage: flows N"), ("flows x", "usage: flows N"),
    ("flows -2", "usage: flows N"), ("flows 51", "from 1 to 50"), ("flows 2 3", "usage: flows N"),
    ("report now", "report takes no argument"),
    ("report", "no flows started in this session yet"),
])
def test_bad_arguments_get_a_clear_message_and_do_nothing(shell, line, message):
    commands, tb, run = shell
    text = run(line)
    assert text.startswith("error: ") and message in text, text
    assert "Traceback" not in text
    assert tb.calls == [] and commands.events == []


def test_pool_commands_call_the_testbed_and_record_events(shell):
    commands, tb, run = shell
    assert run("addnf") == "added nf4\n"
    assert run("drain nf4").startswith("draining nf4")
    assert run("rmnf nf2").startswith("removed nf2")
    assert run("killnf nf3").startswith("killed nf3")
    assert run("killlb lb2").startswith("killed lb2's agent")
    assert run("addlb") == "added lb5\n"
    assert tb.calls == [("add_nf",), ("drain_nf", "nf4"), ("remove_nf", "nf2"),
                        ("kill_nf", "nf3"), ("kill_lb", "lb2"), ("add_lb",)]
    assert [(a, t) for _, a, t in commands.events] == [
        ("add_nf", "nf4"), ("drain_nf", "nf4"), ("remove_nf", "nf2"), ("kill_nf", "nf3"),
        ("kill_lb", "lb2"), ("add_lb", "lb5")]
    times = [t for t, _, _ in commands.events]
    assert times == sorted(times) and times[0] >= 0
    assert "no LB 'lb2'" in run("killlb lb2")   # gone now


def test_partition_and_heal_an_lb_node(shell):
    commands, tb, run = shell
    assert run("partition lb2").startswith("lb2 is cut off")
    assert run("heal lb2").startswith("lb2 is back")
    assert "usage: partition lbN" in run("partition")
    assert "'nf1' is not an LB name" in run("heal nf1")
    assert tb.calls == [("partition_lb", "lb2"), ("heal_lb", "lb2")]
    assert [(a, t) for _, a, t in commands.events] == [("partition_lb", "lb2"),
                                                        ("heal_lb", "lb2")]


def test_killctl_waits_for_the_controller_and_says_how_long_it_took(shell):
    commands, tb, run = shell
    out = run("killctl")
    assert tb.calls == [("kill_controller", True)]
    assert "REST after 1.2 s" in out and "epoch 4 (was 3) after 1.5 s" in out, out
    assert [(a, t) for _, a, t in commands.events] == [("kill_controller", "")]
    assert "usage: killctl" in run("killctl now")


def test_testbed_errors_are_printed_not_raised(shell):
    commands, tb, run = shell
    tb.refuse = "controller refused POST /nfs/nf1/drain: nf1 is failed"
    assert run("drain nf1") == "error: controller refused POST /nfs/nf1/drain: nf1 is failed\n"
    assert commands.events == []
    assert run("view").startswith("error: controller refused")

    def boom():
        raise RuntimeError("unexpected")
    tb.add_nf = boom
    assert run("addnf") == "error: RuntimeError: unexpected\n"


def test_view_lists_epoch_lbs_and_nfs(shell):
    _, tb, run = shell
    text = run("view")
    assert tb.calls == [("rest", "GET", "/view")]
    assert "epoch 3  chain_len 3  mode chain (steered)  steering ports 3001,empty,3002" in text
    assert re.search(r"lb1\s+up\s+entries\s+7\s+reported epoch 3", text)
    assert re.search(r"lb2\s+joining\s+entries\s+-\s+reported epoch 2", text)
    assert re.search(r"nf2\s+draining", text)


class AgentSocket:
    """A unix socket answering one request like an agent's control socket (agents.lb)."""

    def __init__(self, directory: Path, name: str, reply: dict):
        self.path = directory / f"{name}.sock"
        self.path.unlink(missing_ok=True)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(self.path))
        self.srv.listen(1)
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, args=(reply,), daemon=True)
        self.thread.start()

    def _serve(self, reply):
        conn, _ = self.srv.accept()
        with conn:
            self.requests.append(conn.recv(100).decode().strip())
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self):
        self.thread.join(5)
        self.srv.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def sock_dir(monkeypatch):
    d = Path(f"/tmp/cli-test-{os.getpid()}")       # short: unix socket paths are limited
    d.mkdir(exist_ok=True)
    monkeypatch.setattr(cli, "RUN_DIR", d)
    yield d
    d.rmdir()


def test_table_formats_the_agents_answer(shell, sock_dir):
    commands, tb, run = shell
    assert "lb1's agent does not answer" in run("table lb1")
    reply = {"name": "lb1", "epoch": 3, "entries": 2,
             "roles": {"head": 1, "middle": 0, "tail": 1, "handoff": 0},
             "rows": [{"key": "tcp 10.0.1.1:20001 10.0.2.1:5201", "nf": "nf2", "ver": 1,
                       "committed": True, "role": "tail", "chain": "lb3 > lb4 > lb1"}],
             "chains": [{"chain": "lb3 > lb4 > lb1", "keys": 1},
                        {"chain": "lb1 > lb2 > lb3", "keys": 1}]}
    agent = AgentSocket(sock_dir, "lb1", reply)
    try:
        text = run("table lb1")
    finally:
        agent.close()
    assert agent.requests == ["table 30"]
    assert "lb1: 2 entries (epoch 3); roles: head 1, middle 0, tail 1, handoff 0" in text
    assert re.search(r"chains lb1 belongs to.*\n\s+lb3 > lb4 > lb1\s+1 keys\n\s+lb1 > lb2 > lb3",
                     text)
    assert re.search(r"tcp 10.0.1.1:20001 10.0.2.1:5201\s+-> nf2\s+tail\s+lb3 > lb4 > lb1"
                     r"\s+ver 1\s+committed", text)


def test_table_of_a_local_mode_agent_and_an_agent_error(shell, sock_dir):
    commands, tb, run = shell
    tb.mode = "local"
    agent = AgentSocket(sock_dir, "lb2", {"name": "lb2", "entries": 1, "chains": [], "rows": [
        {"key": "tcp 10.0.1.2:30002<->10.0.2.2:6202", "nf": "nf1", "role": "local"}]})
    try:
        text = run("table lb2")
    finally:
        agent.close()
    assert "lb2: 1 entries; no chains (local mode" in text
    assert "belongs to" not in text
    assert re.search(r"tcp 10.0.1.2:30002<->10.0.2.2:6202\s+-> nf1\s+local", text)
    agent = AgentSocket(sock_dir, "lb3", {"error": "unknown command 'table'"})
    try:
        assert run("table lb3") == "error: lb3: unknown command 'table'\n"
    finally:
        agent.close()


def test_plan_uses_fresh_ports_and_takes_hosts_in_turn(shell, tmp_path):
    from scenarios.traffic import Flow

    class ScenarioTraffic:
        flows = [Flow("f001", "c1", "s1", 6201, 30001, 0.0, 10.0),
                 Flow("f002", "c2", "s2", 6203, 30002, 0.0, 10.0)]
    commands = cli.TestbedCommands(FakeTestbed(tmp_path), tmp_path, traffic=ScenarioTraffic())
    first = commands.plan(3)
    assert [f.server_port for f in first] == [6202, 6204, 6205]
    assert [f.client_port for f in first] == [30003, 30004, 30005]
    assert [(f.client, f.server) for f in first] == [("c1", "s1"), ("c2", "s2"), ("c3", "s1")]
    assert first[0].client_ip == "10.0.1.1" and first[1].server_ip == "10.0.2.2"
    assert {f.rate_mbit for f in first} == {2.0} and {f.duration_s for f in first} == {20.0}
    commands.flows.extend(first)                 # as if started
    again = commands.plan(2)
    assert [f.flow_id for f in first + again] == ["x001", "x002", "x003", "x004", "x005"]
    assert [f.server_port for f in again] == [6206, 6207]


def test_every_command_has_help_and_dispatches_through_cmd(tmp_path):
    class Shell(cli.TestbedCommands, cmd.Cmd):
        pass
    out = io.StringIO()
    sh = Shell(FakeTestbed(tmp_path), tmp_path, stdout=out)
    for name in cli.COMMANDS:
        text = sh.help_text(name)
        assert text.startswith(name) and len(text) > 30 and "\n " not in text, name
    sh.onecmd("drain")
    assert "usage: drain nfN" in out.getvalue()
    assert sh.complete_drain("nf", "drain nf", 6, 8) == ["nf1", "nf2", "nf3"]
    assert sh.complete_table("lb3", "table lb3", 6, 9) == ["lb3"]
    banner = sh.banner()
    for needle in ("logs folder", "controller.log", "decisions.csv",
                   "lb1 tcpdump -ni lb1-eth1 -w /tmp/lb1.pcap"):
        assert needle in banner


# --- a real session ------------------------------------------------------------------------

def _wait_for_lock(timeout: float = 600) -> None:
    """Until no other testbed run holds the machine-wide lock (polled every 5 s)."""
    lock = RUN_DIR / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another testbed run held the lock for 10 minutes")
        time.sleep(5)


def _prompt(child, timeout: float = 60) -> str:
    child.expect_exact("mininet> ", timeout=timeout)
    return child.before


def _command(child, line: str, timeout: float = 60) -> str:
    child.sendline(line)
    return _prompt(child, timeout)


def _poll_command(child, line: str, pattern: str, timeout: float, every: float = 1.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = _command(child, line)
        if re.search(pattern, out) or time.monotonic() > deadline:
            return out
        time.sleep(every)


def _our_processes(run_dir: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if (("agents.lb" in args or "ryu_apps.launch" in args or "iperf3" in args)
                and str(run_dir) in args) or re.search(r"iperf3 -s -1 -p 620[1-3]\b", args):
            found.append(f"{proc.name}: {args}")
    return found


BUSY = "another testbed run is in progress"


def _start_session(pexpect, log_path: Path, timeout: float = 600):
    """Spawn `make cli`; while another run holds the lock, retry every 20 s (10 min at most)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    deadline = time.monotonic() + timeout
    log = open(log_path, "w")
    while True:
        _wait_for_lock(max(1.0, deadline - time.monotonic()))
        child = pexpect.spawn("make", ["--no-print-directory", "cli"], cwd=str(ROOT), env=env,
                              encoding="utf-8", codec_errors="replace", timeout=90,
                              dimensions=(60, 250))
        child.logfile_read = log
        if child.expect([r"run dir:\s+(\S+)", BUSY], timeout=150) == 0:
            return child, Path(child.match.group(1).strip())
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        if time.monotonic() > deadline:
            pytest.fail("another testbed run held the lock for 10 minutes")
        time.sleep(20)


@pytest.mark.root
def test_make_cli_session_and_nothing_left_behind(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    child, run_dir = _start_session(pexpect, tmp_path / "session.log")
    try:
        _prompt(child, 90)

        out = _command(child, "view")
        assert re.search(r"epoch \d+\s+chain_len 3\s+mode chain", out), out
        assert len(re.findall(r"lb\d\s+up\s+entries", out)) == 4, out
        assert "nf4" not in out

        out = _command(child, "addnf", 60)
        assert "added nf4" in out, out
        out = _command(child, "view")
        assert re.search(r"nf4\s+active", out), out

        out = _command(child, "flows 3", 60)
        assert "started 3 flows" in out, out
        out = _poll_command(child, "table lb1", r"lb\d > lb\d > lb\d\s+\d+ keys", 20)
        assert re.search(r"lb1: \d+ entries \(epoch \d+\); roles: head \d+", out), out
        assert re.search(r"chains lb1 belongs to", out), out
        assert re.search(r"lb\d > lb\d > lb\d\s+\d+ keys", out), out

        out = _command(child, "drain nf9")
        assert "error: no NF 'nf9'" in out and "Traceback" not in out, out
        out = _command(child, "table")
        assert "usage: table lbN" in out, out

        # any program's connection is in the report: curl to a web server started here
        out = _command(child, "s1 python3 -m http.server 8088 --bind 10.0.2.1 "
                              ">/dev/null 2>&1 & echo PID=$!")
        server_pid = re.search(r"PID=(\d+)", out).group(1)
        out = _poll_command(child, "c1 curl -s -o /dev/null -w 'code=%{http_code}\\n' "
                                   "--local-port 41234 http://10.0.2.1:8088/", r"code=200", 20)
        assert "code=200" in out, out
        _command(child, f"s1 kill {server_pid}")

        out = _command(child, "report", 60)
        assert "3 flows still running" in out and "wrote" in out, out
        flows = pd.read_csv(run_dir / "flows.csv", keep_default_na=False)
        planned = flows[flows["origin"] == "planned"]
        assert sorted(set(planned["flow_id"])) == ["x001", "x002", "x003"]
        web = flows[(flows["client_port"].astype(str) == "41234")
                    & (flows["server_port"].astype(str) == "8088")]
        assert len(web) == 1, flows[["flow_id", "origin", "client_port", "server_port"]]
        assert web.iloc[0]["origin"] == "observed" and web.iloc[0]["client"] == "c1"
        assert web.iloc[0]["nfs_seen"] != "" and web.iloc[0]["moved"] in (False, "False")
        # once the flows ended (20 s), the report holds their iperf3 results
        deadline = time.monotonic() + 40
        while "still running" in out and time.monotonic() < deadline:
            time.sleep(2)
            out = _command(child, "report", 60)
        assert "still running" not in out, out
        flows = pd.read_csv(run_dir / "flows.csv", keep_default_na=False)
        data = flows[flows["role"] == "data"]
        assert sorted(data["flow_id"]) == ["x001", "x002", "x003"], flows
        assert data["completed"].astype(str).eq("True").all(), data[["flow_id", "error"]]
        assert (data["throughput_bps"].astype(float) > 1.5e6).all(), data["throughput_bps"]
        summary = pd.read_csv(run_dir / "summary.csv").iloc[0]
        assert (summary["scenario"], summary["flows"], summary["moved"]) == ("cli", 3, 0)
        assert "add_nf(nf4)" in summary["events"]

        # an NF host turns its forwarding off, telling nobody: the controller's probes mark
        # it failed within the bound (0.5 s, and the CLI's round trips), and only it
        started = time.monotonic()
        _command(child, "nf2 sysctl -qw net.ipv4.ip_forward=0")
        out = _poll_command(child, "view", r"nf2\s+failed", 10, every=0.05)
        took = time.monotonic() - started
        assert re.search(r"nf2\s+failed \(its probes stopped returning", out), out
        assert took < 1.5, (took, out)
        assert re.search(r"nf1\s+active", out) and re.search(r"nf3\s+active", out), out
        assert re.search(r"nf4\s+active", out), out

        # the controller killed: its supervisor restarts it, and it resumes the same view at
        # a higher epoch (nf2 still failed, nf4 still there)
        before = int(re.search(r"epoch (\d+)", out).group(1))
        out = _command(child, "killctl", 60)
        assert "controller killed and back" in out and "Traceback" not in out, out
        out = _command(child, "view")
        assert int(re.search(r"epoch (\d+)", out).group(1)) > before, out
        assert re.search(r"nf2\s+failed", out) and re.search(r"nf4\s+active", out), out
        assert len(re.findall(r"lb\d\s+up\s+entries", out)) == 4, out

        child.sendline("exit")
        child.expect(pexpect.EOF, timeout=90)
    finally:
        if child.isalive():
            child.sendintr()
            child.sendline("exit")
            child.expect(pexpect.EOF, timeout=90)
        child.close()
    assert child.exitstatus == 0, (tmp_path / "session.log").read_text()[-3000:]

    bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout
    assert "gw" not in bridges.split()
    assert _our_processes(run_dir) == []
    assert list(RUN_DIR.glob("*.sock")) == []
    assert (run_dir / "logs" / "controller.log").is_file()
