"""The testbed benchmark: each figure of ``bench.csv`` measured on a running testbed.

Several testbeds run one after the other (only one may run at a time on a machine), each
fresh, so that one measurement cannot spoil the next:

- ``datapath``: 1 client, 1 server, 1 LB, 1 NF. One UDP 5-tuple (raw 60-byte frames) is
  flooded at the LB host, at its link (sent on the switch's end of its veth, unpaced) and
  through the switch (from ``c1``, paced at ``datapath_flood_pps``); what the LB host sends
  back is dropped at ``gw``, so that the NF and the server do not compete for the 2 cores.
  The LB agent's ``forwarded`` counter over a fixed window, then (agent killed) the bare
  forwarder's (``bench.forwarder``) on the same host under the same floods (``datapath``).
- ``maglev``, ``chain-L1``, ``chain-L2``, ``chain-L3`` (3 LBs), ``chain-N5``, ``chain-N8``
  (L=3): TCP connect times, sequential connects from c1 to s1, each a new connection. In the
  maglev testbed also on the direct path (higher-priority flows at ``gw`` that send edge
  traffic straight to its host: no LB, no NF). The first-packet overhead compares the
  ``maglev`` and ``chain-L3`` testbeds, so they run in turn, ``plan.connect_rounds`` times
  each with a share of the samples, and their samples are pooled: the load of the machine
  drifts over minutes, and both sides of the difference see the same drift.
- ``chain`` (the default scenario's cluster: 4 LBs, 3 NFs, L=3): paced and unpaced iperf3
  through the LBs and on the direct path; an NF add under new connections; an LB kill under
  sequence-numbered UDP probes; last, the new-connection rate ramp.
- ``arrivals`` (the default scenario's cluster, chain mode): the scenarios' open-loop
  generator (``agents.loadgen``, one per client host) ramps Poisson arrivals of 1 KB
  connections until a step has a client error (``max_arrival_cps``: the highest rate with
  none), then holds each connection open (idle) longer and longer at ``arrival_hold_cps``
  until one fails (``max_concurrent``: the most connections open at once, summed over the
  clients' peaks, in a step with none).
- ``entries`` (4 LBs, L=3): one UDP packet per distinct 5-tuple until the cluster holds
  ``plan.entries`` keys; entries from the controller's view (the agents' heartbeats) and the
  agents' status, memory from their RSS.

Every phase checks afterwards that the controller still has every LB node up: a node removed
for missed heartbeats would make the figures meaningless, so the phase fails and says so.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from agents import lb as lb_agent
from agents.chain import VARIANTS
from agents.lb import FirstTrace
from agents.messages import Answer, Write
from bench import Row
from bench import measure as m
from scenarios.arrivals import ARRIVAL_PORT, ArrivalBatch, plan_arrivals
from scenarios.testbed import PY, RUN_DIR, Testbed, TestbedBusy, TestbedFailure, wait_for
from scenarios.traffic import Arrivals, Flow, Traffic, listening, start_size_servers
from topo import testbed as topo
from topo.testbed import TestbedParams, ip_of, mac_of

FIRST_PACKET_CSV = "first_packet.csv"   # the first-packet group's breakdown, in the run folder
COOKIE = "0xbe0c"            # every flow this benchmark installs at gw
SERVER_PORTS = (9000, 9001, 9002, 9003)


class BenchError(RuntimeError):
    """A benchmark step failed (message says which and where its log is); ``rows``: what
    its group measured before (kept in the results)."""

    def __init__(self, message: str, rows=()):
        super().__init__(message)
        self.rows = list(rows)


@dataclass(frozen=True)
class Plan:
    """How much of everything to do; ``QUICK`` is a smoke-sized plan."""
    connect_samples: int = 200
    connect_interval_s: float = 0.01
    connect_rounds: int = 3              # maglev / chain-L3 testbeds in turn (see above)
    datapath_window_s: float = 3.0
    datapath_repeats: int = 3
    datapath_flood_pps: float = 300_000  # through gw (0: unpaced); at the link: unpaced
    datapath_pin: bool = False           # flood on CPU 0, the LB agent / forwarder on CPU 1
    throughput_s: float = 8.0
    e2e_flows: int = 12                  # the default scenario's first batch ...
    e2e_rate_mbit: float = 2.0           # ... and its pacing
    rate_steps: tuple = (100, 200, 300, 400, 500, 600, 800, 1000, 1300, 1600, 2000, 2500, 3200)
    rate_step_s: float = 3.0
    rate_timeout_s: float = 1.0          # a connect slower than this lost its SYN: an error
    probe_interval_s: float = 0.01
    probe_flows_per_client: int = 8
    entries: int = 110_000
    spray_rate: float = 1500.0
    spray_chunk: int = 10_000
    lock_wait_s: float = 600.0
    lock_poll_s: float = 20.0
    profile: bool = False                # py-spy the agents during datapath and entries
    arrival_steps: tuple = (100, 200, 300, 400, 600, 800, 1000, 1300, 1600, 2000, 2500, 3200)
    arrival_step_s: float = 4.0
    arrival_hold_cps: float = 250.0
    arrival_holds: tuple = (2.0, 4.0, 8.0, 12.0, 16.0)  # x 250/s: about 500 .. 4000 open

    def asdict(self) -> dict:
        return asdict(self)


QUICK = Plan(connect_samples=30, connect_rounds=1, datapath_window_s=1.5, datapath_repeats=1,
             throughput_s=3.0, rate_steps=(100, 200), rate_step_s=1.5, entries=3000,
             spray_chunk=1500, arrival_steps=(100, 200), arrival_step_s=1.5,
             arrival_hold_cps=100.0, arrival_holds=(1.0,))

GROUPS = ("datapath", "datapath-off", "maglev", "chain-L1", "chain-L2", "chain-L3", "chain-L3-patent",
          "chain-N5", "chain-N8", "chain-N5-patent", "chain-N8-patent", "chain", "chain-off",
          "first-packet", "arrivals", "entries")
CONNECT_GROUPS = {   # group -> (mode, LB nodes, chain length, connect label, chain variant)
    "maglev": ("maglev", 3, 3, "maglev", VARIANTS[0]),
    "chain-L1": ("chain", 3, 1, "L1_N3", "steered"), "chain-L2": ("chain", 3, 2, "L2_N3", "steered"),
    "chain-L3": ("chain", 3, 3, "L3_N3", "steered"),
    "chain-L3-patent": ("chain", 3, 3, "L3_N3_patent", "patent"),
    "chain-N5": ("chain", 5, 3, "L3_N5", "steered"), "chain-N8": ("chain", 8, 3, "L3_N8", "steered"),
    "chain-N5-patent": ("chain", 5, 3, "L3_N5_patent", "patent"),
    "chain-N8-patent": ("chain", 8, 3, "L3_N8_patent", "patent"),
}


# --- running tools in hosts -------------------------------------------------------------

class Session:
    """One running testbed plus the helpers every phase uses."""

    def __init__(self, tb: Testbed, plan: Plan, log):
        self.tb, self.plan, self.log = tb, plan, log
        self.out = tb.run_dir / "tools"
        self.out.mkdir(exist_ok=True)
        self.n = 0                  # tools started
        self.iperf_runs = 0

    def start(self, host: str | None, args: list[str], name: str, cpu: int | None = None):
        """Start ``python -m bench.traffic ARGS --out FILE`` (or another module) in a host (in
        the root namespace if ``host`` is None), on CPU ``cpu`` only if given."""
        self.n += 1
        name = f"bench-{self.n:03d}-{name}"
        out = self.out / f"{name}.json"
        cmd = [PY, "-m", *args, "--out", str(out)]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        return self.tb.spawn(name, cmd, host=None if host is None else self.tb.net[host]), \
            out, name

    def finish(self, started, timeout: float) -> dict:
        proc, out, name = started
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"{name} did not finish within {timeout:.0f} s "
                             f"(log: {self.tb.logs / name}.log)") from None
        if proc.returncode != 0:
            raise BenchError(f"{name} failed (exit {proc.returncode}): {self._tail(name)}")
        try:
            return json.loads(out.read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"{name}: unreadable result {out}: {e}") from None

    def stop(self, started, timeout: float = 5.0) -> dict:
        """SIGTERM a tool that runs until told (``server``), then read its result."""
        started[0].terminate()
        return self.finish(started, timeout)

    def run(self, host: str, args: list[str], name: str, timeout: float) -> dict:
        return self.finish(self.start(host, args, name), timeout)

    def _tail(self, name: str) -> str:
        try:
            lines = (self.tb.logs / f"{name}.log").read_text().strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    # --- switch and agents ---

    def ofctl(self, *args: str) -> str:
        p = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError(f"ovs-ofctl {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout

    def add_flow(self, spec: str) -> None:
        self.ofctl("add-flow", topo.SWITCH, f"cookie={COOKIE},{spec}")

    def del_flows(self) -> None:
        self.ofctl("del-flows", topo.SWITCH, f"cookie={COOKIE}/-1")

    @contextmanager
    def direct_path(self):
        """Edge traffic goes straight to its host at gw (no LB, no NF) while inside."""
        for h in self.tb.net.hosts:
            if topo.kind_of(h.name) in ("client", "server"):
                self.add_flow(f"priority=250,ip,dl_dst={mac_of(h.name)},"
                              f"actions=output:{topo.port_number(h.name)}")
        try:
            yield
        finally:
            self.del_flows()

    @contextmanager
    def nf_path(self):
        """Edge traffic crosses one NF at gw and no LB node while inside, both directions of a
        client's connections through the same NF (the client's index picks it among the
        testbed's first NFs): the path of an NF tier without an LB tier, which crosses the
        switch twice (the LB path three times, the direct path once)."""
        hosts = [h.name for h in self.tb.net.hosts]
        nfs = [topo.host_name("nf", i) for i in range(1, self.tb.params.nfs + 1)]
        clients = [h for h in hosts if topo.kind_of(h) == "client"]
        servers = [h for h in hosts if topo.kind_of(h) == "server"]
        for i, c in enumerate(clients):
            nf = nfs[i % len(nfs)]
            to_nf = f"actions=mod_dl_dst:{mac_of(nf)},output:{topo.port_number(nf)}"
            self.add_flow(f"priority=250,in_port={topo.port_number(c)},ip,{to_nf}")
            for srv in servers:
                self.add_flow(f"priority=250,in_port={topo.port_number(srv)},ip,"
                              f"nw_dst={ip_of(c)},{to_nf}")
        for nf in nfs:
            for h in clients + servers:
                self.add_flow(f"priority=250,in_port={topo.port_number(nf)},ip,"
                              f"dl_dst={mac_of(h)},actions=output:{topo.port_number(h)}")
        try:
            yield
        finally:
            self.del_flows()

    def port_rx(self, host: str) -> int:
        port = topo.port_number(host)
        return m.ovs_port_rx(self.ofctl("dump-ports", topo.SWITCH, str(port)), port)

    def status(self, lb: str) -> dict:
        try:
            return lb_agent.query(str(RUN_DIR), lb, "status")
        except (OSError, ValueError) as e:
            raise BenchError(f"cannot read the status of agent {lb}: {e}") from None

    def chain_frames(self) -> int:
        """Chain frames the running agents' engines sent so far."""
        return sum((self.status(lb).get("engine") or {}).get("frames_out", 0)
                   for lb in self.tb.lbs)

    def cluster(self) -> dict:
        """Sum of entries and pending lookups over the running agents."""
        sts = [self.status(lb) for lb in self.tb.lbs]
        return {"entries": sum(s.get("entries") or 0 for s in sts),
                "pending": sum(s.get("pending") or 0 for s in sts)}

    def settle(self, timeout: float = 15.0) -> None:
        """Until no agent has a lookup pending."""
        wait_for("every agent's pending lookups to drain",
                 lambda: self.cluster()["pending"] == 0, timeout, 0.2)

    def view_lbs(self) -> dict:
        """LB name -> its entry in the controller's view (GET /view)."""
        return {lb["name"]: lb for lb in self.tb.rest("GET", "/view")["lbs"]}

    def lost_members(self) -> list[str]:
        """Agents that should run but that the controller no longer has up."""
        view = self.view_lbs()
        return sorted(lb for lb in self.tb.lbs if view.get(lb, {}).get("status") != "up")

    def check_members(self, during: str) -> None:
        lost = self.lost_members()
        if lost:
            raise BenchError(f"the controller removed {', '.join(lost)} (missed heartbeats) "
                             f"during {during}; the figures of this testbed would not be valid")

    def rss(self, lb: str) -> int:
        pid = self.tb.procs[lb].pid
        try:
            return m.rss_bytes(Path(f"/proc/{pid}/status").read_text())
        except OSError as e:
            raise BenchError(f"cannot read the memory of agent {lb} (pid {pid}): {e}") from None

    def servers(self, hosts=("s1", "s2")) -> list:
        """Accept-and-close TCP servers on SERVER_PORTS; returns the started tools."""
        started = []
        for h in hosts:
            ready = self.out / f"ready-{h}-{self.n}"
            ready.unlink(missing_ok=True)
            args = ["bench.traffic", "server", *[f"--port={p}" for p in SERVER_PORTS],
                    "--ready", str(ready)]
            started.append(self.start(h, args, f"server-{h}"))
            wait_for(f"the TCP server on {h}", ready.exists, 10, 0.05)
        return started


def py_spy() -> str | None:
    for path in (Path(PY).parent / "py-spy", Path("/usr/local/bin/py-spy"), Path("/usr/bin/py-spy")):
        if path.exists():
            return str(path)
    return None


@contextmanager
def profiled(s: Session, lb: str, name: str, seconds: float):
    """py-spy samples agent ``lb`` while inside (when the plan asks for profiles); writes
    ``profiles/<name>.txt`` (collapsed stacks) and ``profiles/<name>.top.txt`` (a summary)."""
    spy = py_spy() if s.plan.profile else None
    proc = None
    if spy:
        out = s.tb.run_dir.parent.parent / "profiles"
        out.mkdir(exist_ok=True)
        raw = out / f"{name}.txt"
        proc = subprocess.Popen([spy, "record", "-p", str(s.tb.procs[lb].pid), "-d",
                                 str(max(1, int(seconds))), "-r", "200", "--nonblocking", "-f",
                                 "raw", "-o", str(raw)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        if proc is not None:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if raw.exists():
                total, own, incl = m.top_frames(raw.read_text(), 20)
                lines = [f"py-spy of {lb} ({name}): {total} samples", "", "self:"]
                lines += [f"  {pct:5.1f}%  {f}" for pct, f in own]
                lines += ["", "inclusive:"] + [f"  {pct:5.1f}%  {f}" for pct, f in incl]
                (out / f"{name}.top.txt").write_text("\n".join(lines) + "\n")
                s.log(f"   profile of {lb}: {out / name}.top.txt")


@contextmanager
def open_testbed(params: TestbedParams, mode: str, run_dir: Path, plan: Plan, log,
                 trace_first: bool = False):
    """A running Testbed (its agents noting first-packet timings if ``trace_first``); waits
    (polling) while another run holds the machine's lock."""
    deadline = time.monotonic() + plan.lock_wait_s
    while True:
        tb = Testbed(params, mode, run_dir, log=lambda msg: log(f"   {msg}"),
                     trace_first=trace_first)
        try:
            tb.__enter__()
            break
        except TestbedBusy:
            if time.monotonic() + plan.lock_poll_s > deadline:
                raise
            log(f"   another testbed run holds the machine; retrying in {plan.lock_poll_s:.0f} s")
            time.sleep(plan.lock_poll_s)
    try:
        yield tb
    finally:
        tb.__exit__(*sys.exc_info())


# --- phases -----------------------------------------------------------------------------

def connect_ms(s: Session, label: str, samples: int | None = None,
               frames: bool = False) -> dict:
    """Sequential TCP connects c1 -> s1 (each a new connection): times (ms), errors, and
    (``frames``) the chain frames the LB nodes sent meanwhile (writes, queries, insert
    requests, answers, acks; not the entries' deletes, which follow the connections'
    TIME_WAIT)."""
    n = samples or s.plan.connect_samples
    args = ["bench.traffic", "connect", "--dst-ip", ip_of("s1"), "--port", str(SERVER_PORTS[0]),
            "--interval", str(s.plan.connect_interval_s)]
    s.run("c1", args + ["--count", "5"], f"warmup-{label}", 30)
    before = s.chain_frames() if frames else 0
    doc = s.run("c1", args + ["--count", str(n)], f"connect-{label}", 30 + n * 3.1)
    if frames:
        s.settle()
    sent = s.chain_frames() - before if frames else 0
    s.check_members(f"the connects of {label}")
    ms, errors = m.connect_times(doc)
    s.log(f"   connect {label}: p50 {m.percentile(ms, 50):.3f} ms, "
          f"p99 {m.percentile(ms, 99):.3f} ms, {errors} errors of {n}"
          + (f", {sent / n:.1f} chain frames each" if frames else ""))
    return {"ms": ms, "errors": errors, "n": n, "frames": sent}


def pool(connect: dict, label: str, measured: dict) -> None:
    """Add one testbed's connect samples to those of ``label``."""
    have = connect.setdefault(label, {"ms": [], "errors": 0, "n": 0, "frames": 0})
    have["ms"] += measured["ms"]
    have["errors"] += measured["errors"]
    have["n"] += measured["n"]
    have["frames"] += measured.get("frames", 0)


DATAPATH_PATHS = ("link", "gw")   # where the flood enters: see ``datapath``


def datapath(s: Session) -> list[Row]:
    """One UDP 5-tuple flooded at the LB host, the LB agent's forwarding rate against the bare
    forwarder's (``bench.forwarder``) on the same host under the same flood, on two paths:

    - ``link``: the flood enters the LB host's link where the switch's side of it is (sent on
      that veth end, in the root namespace, unpaced): the LB host alone, as a traffic
      generator on its wire would measure it (``datapath_pps``);
    - ``gw``: from ``c1`` through the switch, paced at ``plan.datapath_flood_pps``
      (``datapath_pps_through_gw``): the switch's userspace datapath, one thread that also
      carries the kernel's work on the frames it sends, caps this one.

    What the LB host sends back is dropped at ``gw``, so the NF and the server do not
    compete for the 2 cores. Each figure is the best of ``plan.datapath_repeats`` runs."""
    p, tb = s.plan, s.tb
    c1, lb1 = "c1", "lb1"
    s.add_flow(f"priority=250,in_port={topo.port_number(c1)},udp,"
               f"actions=output:{topo.port_number(lb1)}")
    s.add_flow(f"priority=250,in_port={topo.port_number(lb1)},udp,actions=drop")
    cpu_flood, cpu_lb = (0, 1) if p.datapath_pin else (None, None)
    if p.datapath_pin:
        pin(tb.procs[lb1].pid, cpu_lb)
    runs = range(p.datapath_repeats)
    agent = {path: max(_agent_run(s, path, r, cpu_flood) for r in runs) for path in DATAPATH_PATHS}
    tb.kill_lb(lb1)
    bare = {path: max(_bare_run(s, path, r, cpu_flood, cpu_lb) for r in runs)
            for path in DATAPATH_PATHS}
    s.del_flows()
    (a, a_gw, a_off), (b, b_gw, b_off) = agent["link"], bare["link"]
    return [Row("datapath_pps", a, "packets/s", "bare AF_PACKET forwarder", b),
            Row("datapath_pps_seen_at_gw", a_gw, "packets/s", "bare forwarder, seen at gw", b_gw),
            Row("datapath_offered_pps", a_off, "packets/s", "offered in the bare run", b_off),
            Row("datapath_pps_through_gw", agent["gw"][0], "packets/s",
                "bare forwarder, through gw", bare["gw"][0])]


def _flood(s: Session, path: str, cpu: int | None):
    """Start the flood of ``datapath`` on ``path`` (``DATAPATH_PATHS``)."""
    p = s.plan
    if path == "link":      # the same frames as the switch hands the LB host
        host, intf, rate = None, topo.switch_intf_of("lb1"), 0.0
    else:
        host, intf, rate = "c1", topo.intf_of("c1"), p.datapath_flood_pps
    return s.start(host, ["bench.traffic", "flood", "--intf", intf, "--dst-mac", mac_of("s1"),
                          "--src-ip", ip_of("c1"), "--dst-ip", ip_of("s1"), "--rate", str(rate),
                          "--duration", str(1.0 + p.datapath_window_s + 0.5)],
                   f"flood-{path}", cpu)


def _window(s: Session, count=None) -> tuple[float, float]:
    """Over ``plan.datapath_window_s``: packets/s of ``count()`` (if given) and packets/s the
    switch's port to lb1 received."""
    c1 = count() if count else 0
    g1, t1 = s.port_rx("lb1"), time.monotonic()
    time.sleep(s.plan.datapath_window_s)
    c2 = count() if count else 0
    g2, t2 = s.port_rx("lb1"), time.monotonic()
    return (c2 - c1) / (t2 - t1), (g2 - g1) / (t2 - t1)


def _where(path: str) -> str:
    return "at the link" if path == "link" else "through gw"


def _agent_run(s: Session, path: str, r: int, cpu_flood) -> tuple[float, float, float]:
    """The LB agent under the flood on ``path``: (packets/s forwarded, packets/s seen at gw,
    packets/s offered)."""
    def count() -> int:
        return forwarded(s.status("lb1"))

    started = _flood(s, path, cpu_flood)
    wait_for("the agent to forward the flood", lambda: count() > 1000, 10, 0.05)
    time.sleep(0.5)
    profile = r == 0 and path == DATAPATH_PATHS[0]
    with profiled(s, "lb1", "datapath-agent", s.plan.datapath_window_s) if profile \
            else nullcontext():
        pps, gw = _window(s, count)
    sent = s.finish(started, 30)
    offered = sent["sent"] / sent["elapsed_s"]
    s.log(f"   datapath agent {_where(path)}, run {r + 1}: {pps:,.0f} pps forwarded "
          f"({gw:,.0f} seen at gw), {offered:,.0f} pps offered")
    return pps, gw, offered


def _bare_run(s: Session, path: str, r: int, cpu_flood, cpu_lb) -> tuple[float, float, float]:
    """The bare forwarder, on the LB host, under the flood on ``path`` (as ``_agent_run``)."""
    fwd = s.start("lb1", ["bench.forwarder", "--intf", topo.intf_of("lb1"), "--dst-mac",
                          mac_of("nf1"), "--warmup", "1.0",
                          "--duration", str(s.plan.datapath_window_s)], "forwarder", cpu_lb)
    started = _flood(s, path, cpu_flood)
    t0 = time.monotonic()
    time.sleep(1.0)                            # the forwarder's warmup
    _, gw = _window(s)
    pps = s.finish(fwd, 30)["pps"]
    sent = s.finish(started, 30)
    offered = sent["sent"] / sent["elapsed_s"]
    s.log(f"   datapath bare forwarder {_where(path)}, run {r + 1}: {pps:,.0f} pps forwarded "
          f"({gw:,.0f} seen at gw), {offered:,.0f} pps offered "
          f"(started {t0 - sent['t0']:+.2f} s apart)")
    return pps, gw, offered


def forwarded(status: dict) -> int:
    """Data packets an LB node forwarded: through its agent and in the kernel."""
    return status["counts"]["forwarded"] + status["counts"]["fast_tx"]


def pin(pid: int, cpu: int) -> None:
    p = subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise BenchError(f"cannot pin pid {pid} to CPU {cpu}: {p.stderr.strip()}")


def throughput(s: Session, label: str, rate_mbit: float, duration: float,
               lbs: bool = True) -> float:
    """Sum of received bits/s of ``plan.e2e_flows`` iperf3 TCP flows started together (and,
    if they cross the LB nodes, ``lbs``, a check that no LB node was lost meanwhile)."""
    clients = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "client"]
    servers = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "server"]
    s.iperf_runs += 1               # fresh server and client ports for every run
    base = 5100 + 100 * s.iperf_runs
    flows = []
    for i in range(s.plan.e2e_flows):
        c, srv = clients[i % len(clients)], servers[i % len(servers)]
        flows.append(Flow(f"{label}-{i + 1:02d}", c, srv, base + i,
                          20000 + 100 * s.iperf_runs + i, 0.0, duration, rate_mbit))
    traffic = Traffic(s.tb)
    traffic.add(flows)
    wait_for(f"the iperf3 flows of {label}", lambda: traffic.running() == 0, duration + 20, 0.2)
    if lbs:
        s.check_members(f"the iperf3 flows of {label}")
    results = traffic.results()
    try:
        total = sum(m.iperf_bps(results[f.flow_id]) for f in flows)
    except m.ParseError as e:
        raise BenchError(f"{label}: {e} (iperf3 JSON under {traffic.dir})") from None
    s.log(f"   throughput {label}: {total / 1e6:.1f} Mbit/s over {len(flows)} flows")
    return total


def setup_rate(s: Session) -> list[Row]:
    """The ramp of new-connection rates, 4 clients to 8 server ports, each step
    ``rate_step_s`` long; it stops at the first step with an error (a connect that failed
    or took longer than ``rate_timeout_s``, or an LB node the controller removed)."""
    p = s.plan
    clients = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "client"]
    dsts = [f"--dst={ip_of(h)}:{port}" for h in ("s1", "s2") for port in SERVER_PORTS]
    steps, best_detail = [], None
    for rate in p.rate_steps:
        s.settle(30)
        started = [s.start(c, ["bench.traffic", "rate", *dsts, "--rate", str(rate / len(clients)),
                               "--duration", str(p.rate_step_s), "--timeout",
                               str(p.rate_timeout_s)], f"rate{rate}-{c}") for c in clients]
        out = m.rate_outcome([s.finish(x, p.rate_step_s + p.rate_timeout_s + 30) for x in started])
        lost = s.lost_members()
        if lost:
            out["errors"] += len(lost)
            out["reasons"][f"LB removed by the controller ({', '.join(lost)})"] = len(lost)
        steps.append((rate, out["errors"]))
        s.log(f"   setup rate {rate}/s: {out['ok']}/{out['attempted']} ok, p50 "
              f"{out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, errors {out['reasons'] or 0}")
        if out["errors"]:
            break
        best_detail = out
    best = m.best_rate(steps)
    rows = [Row("setup_rate_cps", best, "connections/s")]
    if best_detail is not None:
        rows.append(Row("setup_rate_connect_ms_p99", best_detail["p99_ms"], "ms"))
    if steps and not steps[-1][1]:
        s.log(f"   setup rate: no errors up to the highest step tried ({best}/s)")
    return rows


def nf_detect(s: Session, timeout: float = 5.0) -> list[Row]:
    """Connections from c1 at 50/s while the NF added last stops forwarding, telling nobody:
    seconds until the controller's probes mark it failed (``Testbed.nf_detections``), and
    the NFs marked failed that were not killed (false detections, under the bench's load so
    far)."""
    victim = s.tb.nfs[-1]
    dsts = [f"--dst={ip_of('s1')}:{port}" for port in SERVER_PORTS]
    started = s.start("c1", ["bench.traffic", "rate", *dsts, "--rate", "50", "--duration", "4",
                             "--timeout", "2"], "rate-nf-detect")
    time.sleep(1.5)
    s.tb.kill_nf(victim)
    found = wait_for(f"the controller to mark {victim} failed",
                     lambda: s.tb.nf_detections()[victim], timeout, 0.05)
    s.finish(started, 40)
    failed = {n["name"] for n in s.tb.rest("GET", "/view")["nfs"] if n["state"] == "failed"}
    s.log(f"   {victim} detected failed {found:.3f} s after it stopped forwarding")
    return [Row("nf_detect_s", found, "s"),
            Row("nf_false_detections", len(failed - set(s.tb.killed_nfs)), "NFs")]


def nf_add(s: Session) -> list[Row]:
    """Connections from c1 at 50/s; an NF is added meanwhile. The figure runs from the
    controller's answer to the add until the first connection through the new NF was
    established (known from the new NF's own per-flow counters)."""
    dsts = [f"--dst={ip_of('s1')}:{port}" for port in SERVER_PORTS]
    s.settle()
    started = s.start("c1", ["bench.traffic", "rate", *dsts, "--rate", "50", "--duration", "6",
                             "--timeout", "2"], "rate-nf-add")
    time.sleep(1.5)
    t0 = time.monotonic()
    name = s.tb.add_nf()
    t1 = time.monotonic()
    doc = s.finish(started, 40)
    s.check_members("the NF add")
    dump = s.tb.dump_nf(name)
    if dump is None:
        raise BenchError(f"no flow dump from the added NF {name}")
    first = m.first_use(doc["conns"], ip_of("c1"), dump["flows"])
    if first is None:
        raise BenchError(f"no new connection used the added NF {name} within "
                         f"{doc['t0'] + 6 - t1:.1f} s")
    s.log(f"   NF add: {name} up in {t1 - t0:.2f} s (host, service, REST); first new connection "
          f"through it {first - t1:.3f} s after the controller took it")
    return [Row("nf_add_first_flow_s", first - t1, "s"),
            Row("nf_add_host_bringup_s", t1 - t0, "s")]


def lb_kill(s: Session, victim: str) -> list[Row]:
    """UDP probe flows (every ``probe_interval_s``) from every client; ``victim`` is killed
    (SIGKILL) 2.5 s in; the figure is when the last interrupted flow forwarded again."""
    box = {}

    def kill():
        box["carried"] = s.status(victim)["counts"]["forwarded"]
        s.tb.kill_lb(victim)
    out = probed_fault(s, f"the LB kill (other than {victim})", kill)
    carried = box["carried"]
    s.log(f"   LB kill ({victim}, which had forwarded {carried} packets): every flow forwards "
          f"again after {out['restore_s']:.3f} s; {out['interrupted_flows']}/{out['live_flows']} "
          f"flows interrupted, longest gap {out['max_gap_s']:.3f} s, {out['lost_flows']} never "
          f"came back, {out['lost_probes']} probes lost")
    if not carried or not out["interrupted_flows"]:
        raise BenchError(f"the killed agent {victim} carried no probe flow: nothing measured")
    s.tb.wait_agents_current(20)
    return [Row("lb_kill_restore_s", out["restore_s"], "s"),
            Row("lb_kill_max_gap_s", out["max_gap_s"], "s"),
            Row("lb_kill_interrupted_flows", out["interrupted_flows"], "flows",
                "live probe flows", out["live_flows"])]


def controller_kill(s: Session) -> list[Row]:
    """The same UDP probe flows while the controller is killed (SIGKILL) and its supervisor
    brings it back: how long until every agent runs its new view, and the flows interrupted
    meanwhile (none should be: the switch keeps its flows, the chain needs no controller)."""
    out = probed_fault(s, "the controller kill", lambda: s.tb.kill_controller(wait=False))
    [outage] = s.tb.outages()[-1:]
    if "agents_s" not in outage:
        raise BenchError(f"the controller did not come back: {outage.get('error')}")
    s.log(f"   controller kill: back (every agent at epoch {outage['epoch_after']}) after "
          f"{outage['agents_s']:.3f} s; {out['interrupted_flows']}/{out['live_flows']} probe "
          f"flows interrupted, longest gap {out['max_gap_s']:.3f} s")
    return [Row("controller_restore_s", outage["agents_s"], "s"),
            Row("controller_kill_interrupted_flows", out["interrupted_flows"], "flows",
                "live probe flows", out["live_flows"])]


def probed_fault(s: Session, what: str, fault) -> dict:
    """UDP probe flows from every client, ``fault()`` 2.5 s in: ``measure.restore_time`` of
    the probes' arrivals (interrupted flows, gaps, the time until the last came back)."""
    p = s.plan
    clients = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "client"]
    servers = ["s1", "s2"]
    k = p.probe_flows_per_client
    duration = 7.0
    s.check_members("the phases before the LB kill")
    recv = []
    for srv in servers:
        recv.append(s.start(srv, ["bench.traffic", "probe-recv", "--duration", str(duration + 1),
                                  *[f"--port={7100 + j}" for j in range(k)]], f"probe-recv-{srv}"))
    for srv in servers:
        wait_for(f"the probe receivers on {srv}", lambda srv=srv: all(
            listening(s.tb.net[srv], 7100 + j, "udp") for j in range(k)), 10)
    send = [s.start(c, ["bench.traffic", "probe-send", "--duration", str(duration),
                        "--interval", str(p.probe_interval_s),
                        *[f"--flow={ip_of(servers[j % 2])}:{7000 + j}:{7100 + j}"
                          for j in range(k)]], f"probe-send-{c}") for c in clients]
    time.sleep(2.5)
    t_fault = time.monotonic()
    fault()
    for x in send:
        s.finish(x, duration + 20)
    arrivals = {}
    for x in recv:
        arrivals.update(s.finish(x, duration + 20)["arrivals"])
    s.check_members(what)
    return m.restore_time(arrivals, t_fault, gap_s=5 * p.probe_interval_s)


def dict_bytes_per_entry(n: int) -> float:
    """RSS growth per entry of a plain ``{key: nf}`` dict of ``n`` 13-byte keys, in a fresh
    process (the same measure as the agents')."""
    code = ("import sys; from bench.measure import rss_bytes; from agents.keys import flow_key_raw\n"
            "from bench.traffic import spray_tuple\n"
            "rss = lambda: rss_bytes(open('/proc/self/status').read())\n"
            "n = int(sys.argv[1]); a, b = bytes((10,0,1,1)), bytes((10,0,2,1)); before = rss()\n"
            "d = {flow_key_raw(a, b, 17, *spray_tuple(i, 10000, 50000, 30000)): 'nf1' "
            "for i in range(n)}\n"
            "print((rss() - before) / len(d))\n")
    p = subprocess.run([PY, "-c", code, str(n)], capture_output=True, text=True,
                       cwd=str(Path(__file__).resolve().parents[1]))
    if p.returncode != 0:
        raise BenchError(f"dict memory baseline failed: {p.stderr.strip()}")
    return float(p.stdout)


def view_entries(s: Session) -> int:
    """Entries (replicas) the agents last reported to the controller, summed."""
    return sum(lb.get("entries") or 0 for lb in s.view_lbs().values())


def entries(s: Session, res: "Results") -> None:
    """Spray distinct UDP 5-tuples in chunks, each at ``spray_rate``, waiting after each
    chunk until the cluster has committed it (polling the controller's view, which costs the
    agents nothing). Appends the rows to ``res`` even when the cluster breaks down midway."""
    p, tb = s.plan, s.tb
    L = tb.params.chain_len
    s.settle()
    before = view_entries(s)
    rss0 = {lb: s.rss(lb) for lb in tb.lbs}
    spray = ["bench.traffic", "spray", "--intf", topo.intf_of("c1"), "--dst-mac", mac_of("s1"),
             "--src-ip", ip_of("c1"), "--dst-ip", ip_of("s1")]
    t0 = time.monotonic()
    sent, broken = 0, None
    for offset in range(0, p.entries, p.spray_chunk):
        count = min(p.spray_chunk, p.entries - offset)
        middle = offset <= p.entries // 2 < offset + count
        with profiled(s, "lb1", "entries-lb1", count / p.spray_rate) if middle else nullcontext():
            s.run("c1", spray + ["--offset", str(offset), "--count", str(count), "--rate",
                                 str(p.spray_rate)], f"spray-{offset}", count / p.spray_rate + 30)
        sent = offset + count
        want = before + sent * L
        try:
            wait_for("the cluster to commit the sprayed keys",
                     lambda: s.lost_members() or view_entries(s) >= 0.999 * want, 60, 0.5)
        except TestbedFailure:
            pass
        lost = s.lost_members()
        held = (view_entries(s) - before) / L
        s.log(f"   entries: {held:,.0f} distinct keys held after {sent:,} sprayed "
              f"({time.monotonic() - t0:.0f} s)")
        if lost:
            broken = (f"the controller removed {', '.join(lost)} (missed heartbeats) with "
                      f"{held:,.0f} keys held, {sent:,} sprayed")
            break
    elapsed = time.monotonic() - t0
    statuses = {lb: s.status(lb) for lb in tb.lbs}
    final = sum(st.get("entries") or 0 for st in statuses.values())
    rss1 = {lb: s.rss(lb) for lb in tb.lbs}
    held = (final - before) / L
    grown = sum(rss1.values()) - sum(rss0.values())
    per_entry = grown / max(1, final - before)
    base = dict_bytes_per_entry(max(sent, 1000))
    retrans = sum((st.get("engine") or {}).get("retransmits", 0) for st in statuses.values())
    s.log(f"   entries: {held:,.0f} held ({final:,} replicas over {len(tb.lbs)} agents, L={L}), "
          f"agents' RSS +{grown / 2**20:.1f} MiB, {per_entry:.0f} B per entry per replica "
          f"(plain dict {base:.0f} B); {retrans} chain retransmissions")
    res.rows += [Row("entries_held", held, "entries", "keys sent", sent),
                 Row("entries_insert_rate", held / elapsed, "entries/s"),
                 Row("memory_per_entry_bytes", per_entry, "bytes", "dict {key: nf}", base)]
    if broken:
        raise BenchError(broken)


# --- groups (one testbed each) ----------------------------------------------------------

def base_params(**kw) -> TestbedParams:
    return TestbedParams(**{"clients": 4, "servers": 2, "lbs": 3, "nfs": 3, "spare_nfs": 0,
                            "spare_lbs": 0, "chain_len": 3, **kw})


@dataclass
class Results:
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    connect: dict = field(default_factory=dict)     # label -> {ms: [...], errors, n}
    cpu_per_gbit: dict = field(default_factory=dict)  # fastpath -> agent CPU s per Gbit


def run_group(group: str, run_dir: Path, plan: Plan, res: Results, log,
              samples: int | None = None, tb_name: str | None = None) -> None:
    tb_dir = run_dir / "testbeds" / (tb_name or group)
    tb_dir.mkdir(parents=True, exist_ok=True)
    if group in ("datapath", "datapath-off"):
        fastpath = "off" if group == "datapath-off" else "xdp"
        params = TestbedParams(clients=1, servers=1, lbs=1, nfs=1, spare_nfs=0, spare_lbs=0,
                               chain_len=1, fastpath=fastpath)
        with open_testbed(params, "chain", tb_dir, plan, log) as tb:
            rows = datapath(Session(tb, plan, log))
            res.rows += rows if fastpath == "xdp" else [replace(r, metric=f"{r.metric}_fastpath_off")
                                                       for r in rows]
    elif group in CONNECT_GROUPS:
        mode, lbs, L, label, variant = CONNECT_GROUPS[group]
        with open_testbed(base_params(lbs=lbs, chain_len=L, variant=variant), mode, tb_dir,
                          plan, log) as tb:
            s = Session(tb, plan, log)
            servers = s.servers(("s1",))
            pool(res.connect, label, connect_ms(s, group, samples, frames=mode == "chain"))
            if mode == "maglev":
                with s.direct_path():
                    pool(res.connect, "direct", connect_ms(s, "direct", samples))
            for started in servers:
                s.stop(started)
    elif group == "first-packet":
        breakdowns = []
        for mode, label in (("maglev", "maglev"), ("chain", "chain")):
            with open_testbed(base_params(), mode, tb_dir / mode, plan, log,
                              trace_first=True) as tb:
                s = Session(tb, plan, log)
                servers = s.servers(("s1",))
                connect_ms(s, f"first-packet-{label}", samples)
                for started in servers:
                    s.stop(started)
            records = []
            for path in sorted((tb_dir / mode / "logs").glob("*.first.jsonl")):
                records += [json.loads(line) for line in path.read_text().splitlines()]
            breakdowns.append(first_packet_breakdown(records, label))
            res.rows += first_packet_stages(breakdowns[-1])
        breakdown = pd.concat(breakdowns, ignore_index=True)
        breakdown.to_csv(run_dir / FIRST_PACKET_CSV, index=False)
        log("   where a new connection's first packet spends its time in the agents "
            f"(p50, microseconds; {FIRST_PACKET_CSV}):")
        for line in format_breakdown(breakdown).splitlines():
            log("   " + line)
    elif group in ("chain", "chain-off"):
        params = TestbedParams(clients=4, servers=2, lbs=4, nfs=3, spare_nfs=1, spare_lbs=0,
                               chain_len=3, fastpath="off" if group == "chain-off" else "xdp")
        with open_testbed(params, "chain", tb_dir, plan, log) as tb:
            if group == "chain":
                chain_group(Session(tb, plan, log), res)
            else:
                s = Session(tb, plan, log)
                rows = throughputs(s, res)
                rows.append(nf_path_row(s, rows))
                res.rows += [replace(r, metric=f"{r.metric}_fastpath_off") for r in rows]
    elif group == "arrivals":
        params = TestbedParams(clients=4, servers=2, lbs=4, nfs=3, spare_nfs=0, spare_lbs=0,
                               chain_len=3)
        with open_testbed(params, "chain", tb_dir, plan, log) as tb:
            res.rows += arrivals_group(Session(tb, plan, log))
    elif group == "entries":
        params = TestbedParams(clients=1, servers=1, lbs=4, nfs=2, spare_nfs=0, spare_lbs=0,
                               chain_len=3)
        with open_testbed(params, "chain", tb_dir, plan, log) as tb:
            entries(Session(tb, plan, log), res)
    else:
        raise ValueError(f"unknown benchmark group {group!r}; valid: {', '.join(GROUPS)}")


def throughputs(s: Session, res: Results) -> list[Row]:
    """Paced and unpaced iperf3 through the LB nodes and on the direct path; the agents' CPU
    per Gbit the LB nodes forwarded in the unpaced run (into ``res.cpu_per_gbit``, by the
    testbed's fast path)."""
    p = s.plan
    paced = throughput(s, "e2e-lb", p.e2e_rate_mbit, p.throughput_s)
    with s.direct_path():
        paced_direct = throughput(s, "e2e-direct", p.e2e_rate_mbit, p.throughput_s)
    cpu, gw, t = agents_cpu_s(s), cpu_s(switch_pid()), time.monotonic()
    unpaced = throughput(s, "max-lb", 0, p.throughput_s)
    cpu, gw_lb = agents_cpu_s(s) - cpu, (cpu_s(switch_pid()) - gw) / (time.monotonic() - t)
    gbit = unpaced * p.throughput_s / 1e9
    res.cpu_per_gbit[s.tb.params.fastpath] = cpu / gbit if gbit else math.nan
    s.log(f"   agents' CPU in max-lb: {cpu:.2f} s for {gbit:.2f} Gbit "
          f"(fast path {s.tb.params.fastpath}); the switch busy {gw_lb:.0%} of a core")
    with s.direct_path():
        gw, t = cpu_s(switch_pid()), time.monotonic()
        unpaced_direct = throughput(s, "max-direct", 0, p.throughput_s)
        gw_direct = (cpu_s(switch_pid()) - gw) / (time.monotonic() - t)
    s.log(f"   the switch busy {gw_direct:.0%} of a core in max-direct")
    return [Row("e2e_throughput", paced / 1e6, "Mbit/s", "direct path", paced_direct / 1e6),
            Row("max_throughput", unpaced / 1e6, "Mbit/s", "direct path", unpaced_direct / 1e6),
            Row("switch_busy_max_throughput", gw_lb, "cores", "direct path", gw_direct)]


def nf_path_row(s: Session, rows: list[Row]) -> Row:
    """``max_throughput`` (from ``rows``) against the same flows on the NF path. Run last: the
    NFs then carry unpaced TCP straight from the edge, and under it the controller's health
    probes of an NF can go unanswered long enough to mark it failed (seen on this machine)."""
    lb = next(r for r in rows if r.metric == "max_throughput")
    with s.nf_path():
        nf = throughput(s, "max-nf", 0, s.plan.throughput_s, lbs=False)
    return Row("max_throughput_nf_path", lb.value, "Mbit/s", "NF path (no LB)", nf / 1e6)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")    # utime, stime


def agents_cpu_s(s: Session) -> float:
    """CPU seconds the LB agents used so far."""
    return sum(cpu_s(s.tb.procs[lb].pid) for lb in s.tb.lbs)


def switch_pid() -> int:
    """ovs-vswitchd's (its userspace datapath forwards every frame through gw)."""
    return int(Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text().split()[0])


def fastpath_rows(res: Results) -> list[Row]:
    on, off = res.cpu_per_gbit.get("xdp"), res.cpu_per_gbit.get("off")
    if on is None:
        return []
    return [Row("agent_cpu_per_gbit_fastpath", on, "CPU s/Gbit",
                "the same flows, FASTPATH=off" if off is not None else "", off)]


def chain_group(s: Session, res: Results) -> None:
    rows = throughputs(s, res)
    res.rows += rows
    servers = s.servers()
    res.rows += nf_add(s)
    res.rows += nf_detect(s)
    res.rows += controller_kill(s)
    res.rows += lb_kill(s, "lb2")
    res.rows += setup_rate(s)          # it may overload the cluster (the NF path uses no LB)
    for started in servers:
        s.stop(started)
    res.rows.append(nf_path_row(s, rows))    # last: it may leave NFs marked failed


def arrival_step(s: Session, label: str, rate: float, duration: float, hold: float,
                 port: int) -> dict:
    """One step of open-loop arrivals (1 KB each, held ``hold`` s) to the size servers'
    ``port`` (one per step: the client ports repeat from step to step, so without it a step
    would reuse the earlier steps' 5-tuples, whose entries the LB nodes still hold): the
    generators' summed figures (``Arrivals.summary``), and the clients' errors (an LB node
    lost counts as one)."""
    clients = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "client"]
    servers = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "server"]
    batch = ArrivalBatch(rate, 0.0, duration, "fixed:1000", timeout_s=hold + 3.0, hold_s=hold)
    s.n += 1
    load = Arrivals(s.tb, plan_arrivals((batch,), clients, servers, seed=s.n, server_port=port),
                    (batch,), out=s.out / f"bench-{s.n:03d}-{label}")
    load.start(0)
    if not load.wait(duration + hold + 30):
        load.stop()
        raise BenchError(f"arrivals {label}: a generator did not finish (logs: {load.dir})")
    out = load.summary()
    if out["generators"] != len(load.clients):
        raise BenchError(f"arrivals {label}: {len(load.clients) - out['generators']} "
                         f"generator(s) wrote no summary (logs: {s.tb.logs})")
    lost = s.lost_members()
    if lost:
        out["errors"][f"LB removed by the controller ({', '.join(lost)})"] = len(lost)
    s.log(f"   arrivals {label}: {rate:g}/s, held {hold:g} s: {out['completed']}/"
          f"{out['planned']} completed, {out['max_concurrent']} open at once, generators at "
          f"most {out['max_late_ms']:.0f} ms late, errors {out['errors'] or 0}")
    return out


def arrivals_group(s: Session) -> list[Row]:
    """max_arrival_cps, then max_concurrent (see the module's docstring)."""
    p = s.plan
    hosts = [h.name for h in s.tb.net.hosts if topo.kind_of(h.name) == "server"]
    ports = [ARRIVAL_PORT + i for i in range(len(p.arrival_steps) + len(p.arrival_holds))]
    size_servers = start_size_servers(s.tb, hosts, ports)
    rows, best = [], 0.0
    ports = iter(ports)
    for rate in p.arrival_steps:
        s.settle(30)
        out = arrival_step(s, f"cps{rate}", rate, p.arrival_step_s, 0.0, next(ports))
        if out["errors"]:
            break
        best = rate
    rows.append(Row("max_arrival_cps", best, "connections/s"))
    most = 0
    for hold in p.arrival_holds:
        try:
            s.settle(30)
            s.check_members("the arrival steps")
        except (TestbedFailure, BenchError) as e:
            # the step that overloaded the cluster left it broken (nodes removed, lookups
            # stuck): what was measured stays, the rest of the group cannot run
            s.log(f"   the cluster did not recover from the last arrival step ({e}): "
                  "max_concurrent not measured")
            for proc in size_servers:
                proc.terminate()
            raise BenchError(f"arrivals: the cluster did not recover after {rate:g}/s: "
                             f"max_concurrent not measured ({e})", rows) from None
        out = arrival_step(s, f"hold{hold:g}", p.arrival_hold_cps, p.arrival_step_s + hold, hold,
                           next(ports))
        if out["errors"]:
            break
        most = max(most, out["max_concurrent"])
    rows.append(Row("max_concurrent", most, "connections"))
    for proc in size_servers:
        proc.terminate()
    return rows


def first_packet_hops(variant: str, lbs: int, chain_len: int) -> float:
    """Chain hops a new connection's first packet takes before the tail forwards it, on
    average over keys, by the protocol (the unit tests follow each path frame by frame):
    steered L-1 (the gateway steers it to its head); patent L+1, L when the receiving node is
    the tail (1 in N)."""
    L = min(chain_len, lbs)
    if variant == "patent":
        return L + 1 - 1 / lbs
    return L - 1


_WRITE, _ANSWER = Write.__name__, Answer.__name__
FIRST_STAGES = (  # stage -> (frame in, the frames out the new connection waits for: the first)
    ("syn", lb_agent.SYN, (_WRITE, lb_agent.DATA)),  # the head (maglev: the LB node): the SYN
    ("mid_write", _WRITE, (_WRITE,)),                 # a middle node passes the Write on
    ("tail_write", _WRITE, (lb_agent.DATA,)),         # the tail commits and forwards the SYN
    ("answer", _ANSWER, ()),                          # the head learns the decision
    ("synack", lb_agent.SYNACK, (lb_agent.DATA,)),    # the SYN-ACK at the head
)


SEGMENTS = ("wake", "queue", "decode", "engine", "encode", "send", "finish")
"""Where a stage's time goes, from the kernel's receive to the frame the connection waits for
leaving (``FirstTrace`` marks): ``wake`` until ``select`` returned (the scheduler's share; 0
for a frame that came while the agent was awake), ``queue`` until the frame was read (frames
read before it), ``decode`` parsing a chain frame
and checking its MAC, ``engine`` the packet logic, ``encode`` building and signing the chain
frames sent up to it, ``send`` the send calls up to it (the waited frame's included),
``finish`` what ran after the last of those (for the Answer: until its handling ended). Beside
them, ``cpu`` is the agent's CPU from the read to that point and ``preempted`` the rest of
that wall time (the agent runnable or in the kernel, not on a CPU)."""


def stage_segments(rec: dict, waits_for: tuple[str, ...]) -> dict | None:
    """One record's stage broken into ``SEGMENTS`` (plus ``total``, ``cpu``, ``preempted``),
    in microseconds; None if the record has no kernel time or sent none of ``waits_for``."""
    if not rec["kernel_ns"]:
        return None
    marks = rec["marks"]
    sent = FirstTrace.SENT
    end = next((i for i, (label, _, _) in enumerate(marks)
                if label.startswith(sent) and label[len(sent):] in waits_for), None)
    if end is None:
        if waits_for:
            return None                  # the other role's Write, or a retry that sent nothing
        end = len(marks) - 1             # until the handling ended
    seg = dict.fromkeys(SEGMENTS, 0.0)
    read_wall, read_cpu = marks[0][1], marks[0][2]
    # a frame that came in while the agent was awake (after its ``select`` returned, in the
    # same drain of the socket) waited for no wake-up: its queue starts at its arrival
    ready = max(rec["woke_ns"], rec["kernel_ns"])
    seg["wake"] = ready - rec["kernel_ns"]
    seg["queue"] = read_wall - ready
    handled = False
    for (_, prev, _), (label, wall, _) in zip(marks[:end], marks[1:end + 1]):
        if label == FirstTrace.DECODED:
            part = "decode"
        elif label == FirstTrace.HANDLED:
            part, handled = "engine", True
        elif label == FirstTrace.ENCODED:
            part = "encode"
        elif label.startswith(sent) and handled:
            part = "send"
        else:
            part = "finish"
        seg[part] += wall - prev
    wall, cpu = marks[end][1], marks[end][2] - read_cpu
    seg["total"] = wall - rec["kernel_ns"]
    seg["cpu"] = cpu
    seg["preempted"] = (wall - read_wall) - cpu
    return {k: v / 1e3 for k, v in seg.items()}


def first_packet_breakdown(records: list[dict], label: str) -> pd.DataFrame:
    """Per stage of a new connection's path through the agents (``FIRST_STAGES``): the p50 of
    each of its segments (``stage_segments``) over the agents' records, and how many."""
    rows = []
    for stage, kind_in, waits_for in FIRST_STAGES:
        for r in records:
            if r["in"] == kind_in:
                seg = stage_segments(r, waits_for)
                if seg is not None:
                    rows.append({"label": label, "stage": stage, **seg})
    cols = ["total", *SEGMENTS, "cpu", "preempted"]
    if not rows:
        return pd.DataFrame(columns=["label", "stage", "n", *cols])
    df = pd.DataFrame(rows)
    order = [stage for stage, _, _ in FIRST_STAGES]
    out = df.groupby(["label", "stage"], sort=False)[cols].median()
    out.insert(0, "n", df.groupby(["label", "stage"], sort=False).size())
    out = out.reset_index()
    out["rank"] = out["stage"].map(order.index)
    return out.sort_values("rank").drop(columns="rank").reset_index(drop=True)


def first_packet_stages(breakdown: pd.DataFrame) -> list[Row]:
    """``first_packet_us_<label>_<stage>`` rows (with ``_wake`` and ``_cpu``) from a
    ``first_packet_breakdown``: p50 of the time from the kernel's receive to the frame the
    connection waits for leaving, of its wake-up and of the agent's CPU until then."""
    rows = []
    for r in breakdown.itertuples():
        name = f"first_packet_us_{r.label}_{r.stage}"
        rows += [Row(name, r.total, "us"), Row(f"{name}_wake", r.wake, "us"),
                 Row(f"{name}_cpu", r.cpu, "us")]
    return rows


def format_breakdown(breakdown: pd.DataFrame) -> str:
    """The breakdown as a table of microseconds (a stage a line)."""
    if breakdown.empty:
        return "(no first-packet records)"
    return breakdown.to_string(index=False, float_format=lambda v: f"{v:.0f}")


def connect_rows(samples: dict) -> list[Row]:
    """connect_ms_* rows and the first-packet overhead, from the pooled connect samples."""
    rows = []
    connect = {label: {"p50": m.percentile(c["ms"], 50), "p99": m.percentile(c["ms"], 99),
                       "errors": c["errors"], "n": c["n"], "frames": c.get("frames", 0)}
               for label, c in samples.items()}
    maglev = connect.get("maglev")
    base, base_name = (maglev["p50"], "maglev, N=3") if maglev else (None, "")
    chain = connect.get("L3_N3")
    if chain and maglev:
        rows.append(Row("first_packet_overhead_ms_p50", chain["p50"] - maglev["p50"], "ms",
                        "maglev connect p50", maglev["p50"]))
        rows.append(Row("first_packet_overhead_ms_p99", chain["p99"] - maglev["p99"], "ms",
                        "maglev connect p99", maglev["p99"]))
    patent = connect.get("L3_N3_patent")
    if patent and maglev:
        rows.append(Row("first_packet_overhead_ms_p50_patent", patent["p50"] - maglev["p50"],
                        "ms", "maglev connect p50", maglev["p50"]))
    if maglev:
        rows.append(Row("connect_ms_p50_maglev", maglev["p50"], "ms"))
    if connect.get("direct"):
        d = connect["direct"]
        rows.append(Row("connect_ms_p50_direct", d["p50"], "ms"))
        rows.append(Row("connect_ms_p99_direct", d["p99"], "ms"))
    for label in ("L1_N3", "L2_N3", "L3_N3", "L3_N3_patent", "L3_N5", "L3_N5_patent", "L3_N8",
                  "L3_N8_patent"):
        c = connect.get(label)
        if c:
            rows.append(Row(f"connect_ms_p50_{label}", c["p50"], "ms", base_name, base))
            rows.append(Row(f"connect_ms_p99_{label}", c["p99"], "ms"))
            if c["frames"]:
                rows.append(Row(f"chain_frames_per_conn_{label}", c["frames"] / c["n"],
                                "frames"))
            _, lbs, L, _, variant = next(g for g in CONNECT_GROUPS.values() if g[3] == label)
            rows.append(Row(f"first_packet_hops_{label}", first_packet_hops(variant, lbs, L),
                            "hops (protocol)"))
    errors = sum(c["errors"] for c in connect.values())
    if connect:
        rows.append(Row("connect_errors", errors, "connections", "connects tried",
                        sum(c["n"] for c in connect.values())))
    return rows


ORDER = ("datapath_pps", "datapath_pps_seen_at_gw", "datapath_offered_pps",
         "datapath_pps_through_gw", "datapath_pps_fastpath_off", "max_throughput",
         "max_throughput_fastpath_off",
         "max_throughput_nf_path", "max_throughput_nf_path_fastpath_off",
         "switch_busy_max_throughput", "agent_cpu_per_gbit_fastpath",
         "first_packet_overhead_ms_p50", "first_packet_overhead_ms_p50_patent",
         "first_packet_overhead_ms_p99")


FIRST_PACKET_PAIR = ("maglev", "chain-L3", "chain-L3-patent")


def schedule(groups, rounds: int) -> list[tuple[str, int]]:
    """(group, round) in running order: the first-packet groups (maglev, the chain in each
    variant) in turn, ``rounds`` times each (round 0: a group run once)."""
    groups = list(groups)
    pair = [g for g in FIRST_PACKET_PAIR if g in groups]
    if len(pair) < 2 or rounds < 2:
        return [(g, 0) for g in groups]
    out = []
    for g in groups:
        if g == pair[0]:
            out += [(p, r) for r in range(1, rounds + 1) for p in pair]
        elif g not in pair:
            out.append((g, 0))
    return out


def host_cpu() -> tuple[int, int] | None:
    """``measure.cpu_steal`` of this machine now, or None where /proc/stat does not say."""
    try:
        return m.cpu_steal(Path("/proc/stat").read_text())
    except (OSError, m.ParseError):
        return None


def host_steal(before, after) -> float:
    """The share of CPU time the host stole between two ``host_cpu`` readings (NaN if either
    is missing or no time passed)."""
    return m.steal_share(before, after) if before and after else math.nan


def run_all(groups, run_dir: Path, plan: Plan, log) -> Results:
    res = Results()
    first = host_cpu()
    for group, rnd in schedule(groups, plan.connect_rounds):
        t, cpu = time.monotonic(), host_cpu()
        name = f"{group}-round{rnd}" if rnd else group
        log(f"== {group}" + (f" (round {rnd} of {plan.connect_rounds})" if rnd else ""))
        try:
            run_group(group, run_dir, plan, res, log,
                      math.ceil(plan.connect_samples / plan.connect_rounds) if rnd else None, name)
        except (BenchError, TestbedFailure, m.ParseError, topo.TestbedError) as e:
            res.rows += getattr(e, "rows", [])
            res.failures.append(f"{name}: {e}")
            log(f"   FAILED: {e}")
        share = host_steal(cpu, host_cpu())
        steal = "" if math.isnan(share) else f", {share:.1%} of the CPU time stolen by the host"
        log(f"   ({time.monotonic() - t:.0f} s{steal})")
    share = host_steal(first, host_cpu())
    if not math.isnan(share):
        # the machines are shared: a run with much steal time has slower, noisier figures
        res.rows.append(Row("host_steal_share", share, "of CPU time"))
    res.rows += connect_rows(res.connect)
    res.rows += fastpath_rows(res)
    rank = {name: i for i, name in enumerate(ORDER)}
    res.rows.sort(key=lambda r: rank.get(r.metric, len(ORDER)))
    return res


TARGETS = {   # metric -> (test on the row, text)
    "datapath_pps": (lambda r: r.ratio is not None and r.ratio >= 1.5, "ratio >= 1.5"),
    "datapath_pps_fastpath_off": (lambda r: r.ratio is not None and r.ratio >= 0.60,
                                  "ratio >= 0.60"),
    # against the NF path, which crosses the switch twice (the LB path three times): the
    # direct path crosses it once, so the switch alone caps that ratio near 1/3 here
    "max_throughput_nf_path": (lambda r: r.ratio is not None and r.ratio >= 0.60,
                               "ratio >= 0.60"),
    "agent_cpu_per_gbit_fastpath": (lambda r: r.ratio is not None and r.ratio <= 0.10,
                                    "ratio <= 0.10"),
    "first_packet_overhead_ms_p50": (lambda r: r.value <= 0.5, "<= 0.5 ms"),
    "lb_kill_restore_s": (lambda r: r.value < 1.5, "< 1.5 s"),
    "nf_detect_s": (lambda r: r.value < 1.0, "< 1 s"),
    "nf_false_detections": (lambda r: r.value == 0, "0"),
    "controller_kill_interrupted_flows": (lambda r: r.value == 0, "0"),
    "entries_held": (lambda r: r.value >= 100_000, ">= 100,000"),
    "e2e_throughput": (lambda r: r.ratio is not None and r.ratio >= 0.9, "ratio >= 0.9"),
    "max_arrival_cps": (lambda r: r.value >= 300, ">= 300/s"),
    "max_concurrent": (lambda r: r.value >= 1000, ">= 1,000"),
}


def target_lines(rows) -> list[str]:
    """'met' / 'MISSED' per targeted metric present in rows."""
    out = []
    for r in rows:
        if r.metric in TARGETS and not (isinstance(r.value, float) and math.isnan(r.value)):
            ok, text = TARGETS[r.metric]
            out.append(f"{r.metric:32s} target {text:14s} {'met' if ok(r) else 'MISSED'}")
    return out


def with_plan(plan: Plan, **kw) -> Plan:
    return replace(plan, **kw)
