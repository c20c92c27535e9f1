"""The interactive testbed CLI: Mininet's CLI plus commands that drive the testbed.

``sudo make cli`` (``python -m scenarios cli --mode chain``) starts a testbed and opens it;
``sudo make scenario NAME=... CLI=1`` opens it at the end of a scenario (or on failure).
Added commands (``help <command>`` explains each): view, table, addnf, drain, rmnf, killnf,
killlb, restartlb, readmitlb, addlb, flows, report. Mininet's own (``<host> <command>``,
``nodes``, ``pingall``, ``exit`` ...) keep working.
"""
from __future__ import annotations

import functools
import inspect
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from mininet.cli import CLI

from agents.conntrack import CtTimeouts
from agents import lb as lb_agent
from scenarios import report
from scenarios.testbed import RUN_DIR, Testbed, TestbedFailure
from scenarios.traffic import Flow, Traffic
from topo.testbed import TestbedError, TestbedParams

MAX_FLOWS = 50                      # per `flows` command: keeps the 2-core machine unsaturated
FLOW_RATE_MBIT, FLOW_DURATION_S = 2.0, 20.0
SERVER_PORT0, CLIENT_PORT0 = 6201, 30001     # scenario flows use 5201+ and 20001+
TABLE_ROWS = 8
COMMANDS = ("view", "table", "addnf", "drain", "rmnf", "killnf", "killlb", "restartlb",
            "readmitlb", "addlb", "killctl", "partition", "heal", "flows", "report")
_NF_RE, _LB_RE = re.compile(r"^nf[1-9][0-9]*$"), re.compile(r"^lb[1-9][0-9]*$")


class UsageError(ValueError):
    """A bad or missing command argument (printed, never a traceback)."""


def _guarded(method):
    """Print errors of a command instead of leaving the CLI with a traceback."""
    @functools.wraps(method)
    def wrapper(self, line):
        try:
            method(self, line)
        except UsageError as e:
            self.say(f"error: {e}")
        except (TestbedFailure, TestbedError, ValueError, OSError) as e:
            self.say(f"error: {e}")
        except Exception as e:          # noqa: BLE001 - the CLI must survive any command
            self.say(f"error: {type(e).__name__}: {e}")
    return wrapper


def _one_name(line: str, pattern: re.Pattern, usage: str, known: list[str], what: str) -> str:
    args = line.split()
    if len(args) != 1:
        raise UsageError(f"usage: {usage}" + (f" (known: {', '.join(known)})" if known else ""))
    name = args[0]
    if not pattern.match(name):
        raise UsageError(f"{name!r} is not {what} name; usage: {usage}")
    if name not in known:
        raise UsageError(f"no {what.split()[-1]} {name!r}; known: {', '.join(known) or 'none'}")
    return name


def _slots(ports: list) -> str:
    """The gateway's steering slots: their ports, 'empty' for a slot no node is up in."""
    return ",".join("empty" if p is None else str(p) for p in ports) or "-"


def _no_args(line: str, usage: str) -> None:
    if line.strip():
        raise UsageError(f"{usage.split()[0]} takes no argument; usage: {usage}")


class TestbedCommands:
    """The added commands, over a running ``Testbed`` (no Mininet CLI needed to call them)."""

    __test__ = False

    def __init__(self, tb, run_dir: Path, traffic=None, report_dir: Path | None = None,
                 stdout=None):
        self.tb = tb
        self.run_dir = Path(run_dir)
        self.report_dir = Path(report_dir) if report_dir else self.run_dir / "cli"
        self.scenario_traffic = traffic
        self.stdout = stdout or sys.stdout
        self.t0 = time.monotonic()
        self.flows: list[Flow] = []         # started by `flows`, for `report`
        self.events: list[tuple[float, str, str]] = []
        self._traffic = None

    def help_text(self, command: str) -> str:
        """The help of an added command (its docstring, dedented)."""
        return inspect.cleandoc(getattr(self, f"do_{command}").__doc__)

    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def _event(self, action: str, target: str) -> None:
        self.events.append((self._now(), action, target))

    # ------------------------------------------------------------------ view / table

    @_guarded
    def do_view(self, line):
        """view: the controller's membership view: epoch, chain length, mode, LB nodes
        (status, table entries, epoch they report) and NFs (active / draining / failed)."""
        _no_args(line, "view")
        v = self.tb.rest("GET", "/view")
        variant = f" ({self.tb.params.variant})" if v["mode"] == "chain" else ""
        self.say(f"epoch {v['epoch']}  chain_len {v['chain_len']}  mode {v['mode']}{variant}  "
                 f"steering ports {_slots(v.get('steering', []))}")
        self.say("LB nodes:")
        for m in v["lbs"]:
            entries = "-" if m.get("entries") is None else m["entries"]
            self.say(f"  {m['name']:6s} {m['status']:8s} entries {entries!s:>6}  "
                     f"reported epoch {m.get('reported_epoch')}")
        if not v["lbs"]:
            self.say("  (none)")
        self.say("NFs:")
        for n in v["nfs"]:
            how = ""
            if n["state"] == "failed" and n.get("failed_age") is not None:
                how = (f" ({'its probes stopped returning' if n.get('detected') else 'removed'}"
                       f" {n['failed_age']:.1f} s ago)")
            self.say(f"  {n['name']:6s} {n['state']}{how}")
        if not v["nfs"]:
            self.say("  (none)")

    @_guarded
    def do_table(self, line):
        """table lbN: that LB node's portion of the flow table: entry count, its roles
        (head / middle / tail / handoff), the chains it belongs to with their key counts,
        and the first rows."""
        name = _one_name(line, _LB_RE, "table lbN", list(self.tb.lbs), "an LB")
        try:
            t = lb_agent.query(str(RUN_DIR), name, "table 30")
        except (FileNotFoundError, ConnectionRefusedError):
            raise UsageError(f"{name}'s agent does not answer on {RUN_DIR}/{name}.sock "
                             f"(not running?)") from None
        except TimeoutError:
            raise UsageError(f"{name}'s agent did not answer within 2 s") from None
        if "error" in t:
            raise UsageError(f"{name}: {t['error']}")
        epoch = f" (epoch {t['epoch']})" if "epoch" in t else ""
        if "roles" not in t:            # not chain mode: the agent keeps a local table
            self.say(f"{name}: {t['entries']} entries{epoch}; no chains ({self.tb.mode} mode: "
                     f"each LB node keeps its own connection table, if any)")
        else:
            self.say(f"{name}: {t['entries']} entries{epoch}; roles: "
                     + ", ".join(f"{k} {v}" for k, v in t["roles"].items()))
            chains = t.get("chains") or []
            self.say(f"chains {name} belongs to (keys per chain):"
                     + ("" if chains else " none yet (no entry stored here)"))
            for c in chains:
                self.say(f"  {c['chain']:24s} {c['keys']:6d} keys")
        rows = t.get("rows") or []
        if rows:
            self.say(f"first rows ({min(len(rows), TABLE_ROWS)} of {t['entries']}):")
            for r in rows[:TABLE_ROWS]:
                extra = f"  ver {r['ver']}  {'committed' if r.get('committed') else 'pending'}" \
                    if "ver" in r else ""
                self.say(f"  {r['key']:44s} -> {r['nf']:10s} {r['role']:7s} "
                         f"{r.get('chain', '')}{extra}")

    # ------------------------------------------------------------------ pool changes

    @_guarded
    def do_addnf(self, line):
        """addnf: add an NF host (the next free nfN) and announce it to the controller;
        new connections may then be proposed to it."""
        _no_args(line, "addnf")
        name = self.tb.add_nf()
        self._event("add_nf", name)
        self.say(f"added {name}")

    @_guarded
    def do_drain(self, line):
        """drain nfN: the NF takes no new connections; its live ones stay on it."""
        name = _one_name(line, _NF_RE, "drain nfN", list(self.tb.nfs), "an NF")
        self.tb.drain_nf(name)
        self._event("drain_nf", name)
        self.say(f"draining {name}")

    @_guarded
    def do_rmnf(self, line):
        """rmnf nfN: remove the NF from the pool (the controller marks it failed and the
        agents purge its entries); its host keeps running."""
        name = _one_name(line, _NF_RE, "rmnf nfN", list(self.tb.nfs), "an NF")
        self.tb.remove_nf(name)
        self._event("remove_nf", name)
        self.say(f"removed {name}")

    @_guarded
    def do_killnf(self, line):
        """killnf nfN: the NF stops forwarding at once (its service dies) and nobody is
        told: the controller's probes mark it failed (see `view`); its connections break."""
        name = _one_name(line, _NF_RE, "killnf nfN", list(self.tb.nfs), "an NF")
        self.tb.kill_nf(name)
        self._event("kill_nf", name)
        self.say(f"killed {name} (silently: the controller's probes will notice)")

    @_guarded
    def do_killlb(self, line):
        """killlb lbN: SIGKILL that LB agent; the controller notices by missed heartbeats
        and removes it from the gateway and the view (see `view`)."""
        name = _one_name(line, _LB_RE, "killlb lbN", list(self.tb.lbs), "an LB")
        self.tb.kill_lb(name)
        self._event("kill_lb", name)
        self.say(f"killed {name}'s agent; the controller drops it after missed heartbeats")

    @_guarded
    def do_restartlb(self, line):
        """restartlb lbN: SIGKILL that LB agent and start it again under its name at once (a
        crash and a service restart): the new process holds nothing, its peers push it its
        part of the table; if the controller dropped it meanwhile, it is admitted again."""
        name = _one_name(line, _LB_RE, "restartlb lbN", list(self.tb.lbs), "an LB")
        self.tb.restart_lb(name)
        self._event("restart_lb", name)
        self.say(f"restarted {name}'s agent; it serves the current view again")

    @_guarded
    def do_readmitlb(self, line):
        """readmitlb lbN: SIGKILL that LB agent, wait until the controller removes the node,
        then admit it again under its name and start its agent (a new life in a later view)."""
        name = _one_name(line, _LB_RE, "readmitlb lbN", list(self.tb.lbs), "an LB")
        self.tb.readmit_lb(name)
        self._event("readmit_lb", name)
        self.say(f"{name} was removed and admitted again; it serves the current view")

    @_guarded
    def do_killctl(self, line):
        """killctl: SIGKILL the controller; its supervisor restarts it at once, and it
        resumes from its saved view at a higher epoch. Traffic keeps flowing meanwhile (the
        switch keeps its flows, the chain needs no controller). Waits until it is back and
        says how long each part took."""
        _no_args(line, "killctl")
        out = self.tb.kill_controller(wait=True)
        self._event("kill_controller", "")
        if "error" in out:
            self.say(f"error: the controller did not come back: {out['error']}")
            return
        self.say(f"controller killed and back: REST after {out['rest_s']} s, switch after "
                 f"{out['switch_s']} s, every agent at epoch {out['epoch_after']} (was "
                 f"{out['epoch_before']}) after {out['agents_s']} s")

    @_guarded
    def do_partition(self, line):
        """partition lbN: that LB node loses the LB cluster network (its -eth1 down) while
        its gateway link stays up; within half a second its peers and it send chain frames
        through the gateway instead (`table lbN` still answers; `heal lbN` undoes it)."""
        name = _one_name(line, _LB_RE, "partition lbN", list(self.tb.lbs), "an LB")
        self.tb.partition_lb(name)
        self._event("partition_lb", name)
        self.say(f"{name} is cut off the LB cluster network")

    @_guarded
    def do_heal(self, line):
        """heal lbN: that LB node's cluster interface up again; chain frames take the cluster
        network again once its hellos arrive."""
        name = _one_name(line, _LB_RE, "heal lbN", list(self.tb.lbs), "an LB")
        self.tb.heal_lb(name)
        self._event("heal_lb", name)
        self.say(f"{name} is back on the LB cluster network")

    @_guarded
    def do_addlb(self, line):
        """addlb: add an LB host (the next free lbN) and start its agent; it receives its
        part of the table before it serves."""
        _no_args(line, "addlb")
        name = self.tb.add_lb()
        self._event("add_lb", name)
        self.say(f"added {name}")

    # ------------------------------------------------------------------ traffic

    def _used_ports(self) -> tuple[set, set]:
        flows = list(self.flows) + list(getattr(self.scenario_traffic, "flows", None) or [])
        return ({f.server_port for f in flows}, {f.client_port for f in flows})

    def plan(self, count: int) -> list[Flow]:
        """``count`` new TCP flows on fresh ports, clients and servers taken in turn."""
        p = self.tb.params
        used_s, used_c = self._used_ports()
        out = []
        sport, cport = SERVER_PORT0, CLIENT_PORT0
        for _ in range(count):
            while sport in used_s:
                sport += 1
            while cport in used_c:
                cport += 1
            i = len(self.flows) + len(out)
            client, server = f"c{i % p.clients + 1}", f"s{i % p.servers + 1}"
            out.append(Flow(f"x{i + 1:03d}", client, server, sport, cport, 0.0,
                            FLOW_DURATION_S, FLOW_RATE_MBIT))
            used_s.add(sport)
            used_c.add(cport)
        return out

    def _start_flows(self, flows: list[Flow]) -> None:
        if self._traffic is None:
            self._traffic = Traffic(self.tb)
        self._traffic.start_servers(flows, wait=True)
        for f in flows:
            f = replace(f, start_s=self._now())
            self._traffic.start(f)
            self.flows.append(f)

    @_guarded
    def do_flows(self, line):
        """flows N: start N iperf3 TCP flows now (paced at 2 Mbit/s, 20 s each, on fresh
        ports, clients and servers in turn); `report` writes their results."""
        args = line.split()
        if len(args) != 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= MAX_FLOWS:
            raise UsageError(f"usage: flows N  (N a whole number from 1 to {MAX_FLOWS})")
        flows = self.plan(int(args[0]))
        self._start_flows(flows)
        self.say(f"started {len(flows)} flows ({flows[0].flow_id}..{flows[-1].flow_id}, "
                 f"{FLOW_RATE_MBIT:g} Mbit/s for {FLOW_DURATION_S:g} s); iperf3 JSON in "
                 f"{self.tb.logs / 'iperf'}")

    def running(self) -> int:
        return self._traffic.running() if self._traffic is not None else 0

    @_guarded
    def do_report(self, line):
        """report: write flows.csv and summary.csv for the flows started in this CLI session
        (with the NFs' per-connection counters and the pool changes made here) and print the
        summary. Flows still running count as not completed: run it again when they end."""
        _no_args(line, "report")
        if not self.flows:
            raise UsageError("no flows started in this session yet: run `flows N` first")
        still = self.running()
        if still:
            self.say(f"warning: {still} of {len(self.flows)} flows still running: they count "
                     f"as not completed (run `report` again after they end)")
        tb = self.tb
        dumps = {nf: tb.nf_dumps[nf] if nf in tb.nf_dumps else tb.dump_nf(nf) for nf in tb.nfs}
        meta = {"scenario": "cli", "mode": tb.mode, "run_id": self.run_dir.name}
        planned = [f.record() for f in self.flows]
        flows_df = report.build_flows(meta, planned, self._traffic.results(), dumps)
        summary = report.build_summary(flows_df, self.events, meta, dumps, planned)
        paths = report.write_results(self.report_dir, flows_df, summary)
        self.say(report.format_summary(summary))
        self.say(f"wrote {paths[0]} and {paths[1]}")

    # ------------------------------------------------------------------ completion

    def _complete(self, text, names):
        return [n for n in names if n.startswith(text)]

    def complete_table(self, text, *_):
        return self._complete(text, self.tb.lbs)

    complete_killlb = complete_restartlb = complete_readmitlb = complete_table

    def complete_drain(self, text, *_):
        return self._complete(text, self.tb.nfs)

    complete_rmnf = complete_killnf = complete_drain

    # ------------------------------------------------------------------ banner

    def banner(self) -> str:
        tb, logs = self.tb, self.tb.logs
        lbs = sorted(tb.lbs)
        first = lbs[0] if lbs else "lb1"
        return "\n".join([
            f"chainlb testbed CLI: mode {tb.mode}, LB nodes {', '.join(lbs)}, "
            f"NFs {', '.join(tb.nfs)}",
            f"  run dir:         {self.run_dir}",
            f"  logs folder:     {logs}/",
            f"  controller log:  {logs / 'controller.log'}",
            f"  decision logs:   {logs}/<lbN>.decisions.csv (time,key,nf,mode), e.g. "
            f"{logs / (first + '.decisions.csv')}",
            f"  agent logs:      {logs}/<lbN>.log; iperf3 JSON: {logs / 'iperf'}/",
            f"  capture chain frames: {first} tcpdump -ni {first}-eth1 -w /tmp/{first}.pcap "
            f"(the LB cluster network; views and heartbeats: {first}-eth0 ether proto 0x88b5)",
            "  capture data:         nf1 tcpdump -ni nf1-eth0 -c 20 tcp",
            "  testbed commands: view, table lbN, addnf, drain nfN, rmnf nfN, killnf nfN, "
            "killlb lbN, restartlb lbN, readmitlb lbN, addlb, flows N, report",
            f"  `report` writes flows.csv and summary.csv into {self.report_dir}",
            "  `help <command>` explains one; Mininet's own: nodes, net, <host> <cmd>, pingall; "
            "`exit` stops everything.",
        ])


class TestbedCLI(TestbedCommands, CLI):
    """Mininet's CLI on ``tb.net`` with the testbed commands; runs until exit / EOF."""

    __test__ = False

    def __init__(self, tb, run_dir: Path, traffic=None, report_dir: Path | None = None,
                 stdin=sys.stdin):
        TestbedCommands.__init__(self, tb, run_dir, traffic, report_dir)
        self.say(self.banner())
        CLI.__init__(self, tb.net, stdin=stdin)

    def do_help(self, line):
        "Describe available CLI commands."
        if line.strip() in COMMANDS:
            self.say(self.help_text(line.strip()))
            return
        CLI.do_help(self, line)
        if not line:
            self.say("Testbed commands: view, table lbN, addnf, drain nfN, rmnf nfN, "
                     "killnf nfN, killlb lbN, restartlb lbN, readmitlb lbN, addlb, flows N, "
                     "report  (help <command>)")


def run_cli(tb: Testbed, run_dir: Path, traffic=None, report_dir: Path | None = None) -> None:
    """Open the CLI on a running testbed; returns when the user exits.

    ``report`` writes into ``report_dir``; by default ``run_dir/cli``, so that a scenario's
    own flows.csv and summary.csv are not overwritten.
    """
    TestbedCLI(tb, run_dir, traffic, report_dir)


def interactive(mode: str, timeouts: CtTimeouts = CtTimeouts(),
                params: TestbedParams | None = None) -> Path:
    """``python -m scenarios cli --mode MODE``: a fresh testbed, the CLI, cleanup on exit."""
    from scenarios.results import new_run_dir
    params = (params or TestbedParams()).validate()
    run_id, run_dir = new_run_dir("cli", mode)
    (run_dir / "params.json").write_text(json.dumps(
        {"scenario": "cli", "mode": mode, "run_id": run_id, "testbed": params.asdict(),
         "conntrack_timeouts": timeouts.asdict(), "lb_timeouts": timeouts.lb_timeouts_by_state()},
        indent=1))
    with Testbed(params, mode, run_dir, timeouts=timeouts) as tb:
        run_cli(tb, run_dir, report_dir=run_dir)
    print(f"testbed stopped; run folder: {run_dir}")
    return run_dir
