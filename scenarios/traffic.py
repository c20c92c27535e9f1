"""The traffic of a run: planned iperf3 flows (one ``Flow`` type, one planner), real
applications and open-loop arrivals, and the processes that carry them in a testbed.

``plan_flows`` derives a scenario's flows from its batches and a seed only, so every LB mode
replays the same flows. ``Traffic``, ``Apps`` and ``Arrivals`` start their servers and
clients in Mininet hosts (``Testbed.spawn``: the testbed ends them on every exit path) and
read back their results; the runner (``scenarios.run``), the CLI and the benchmark share them.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import asdict, dataclass, replace

from scenarios import arrivals as arrivals_mod, report, workloads
from scenarios.testbed import Testbed, TestbedFailure, host_checked, wait_for
from topo.testbed import ip_of

IPERF_SERVER_PORT0, IPERF_CLIENT_PORT0 = 5201, 20001    # a scenario's flow i: 5201+i, 20001+i


@dataclass(frozen=True)
class Flow:
    """One planned iperf3 flow: ``client`` -> ``server``:``server_port`` from ``client_port``,
    starting ``start_s`` after the traffic starts, ``duration_s`` long, paced at
    ``rate_mbit`` (0: unpaced)."""
    flow_id: str
    client: str
    server: str
    server_port: int
    client_port: int
    start_s: float
    duration_s: float
    rate_mbit: float = 2.0
    proto: str = "tcp"

    @property
    def client_ip(self) -> str:
        return ip_of(self.client)

    @property
    def server_ip(self) -> str:
        return ip_of(self.server)

    def record(self) -> dict:
        """The flow as params.json and ``scenarios.report`` take it."""
        return {**asdict(self), "client_ip": self.client_ip, "server_ip": self.server_ip}

    def iperf_command(self, logfile: str) -> list[str]:
        cmd = ["iperf3", "-c", self.server_ip, "-p", str(self.server_port), "--cport",
               str(self.client_port), "-t", str(self.duration_s), "-b", f"{self.rate_mbit}M",
               "-J", "--logfile", logfile]
        block = iperf_block_bytes(self.rate_mbit, self.proto)
        if block:
            cmd += ["-l", str(block)]
        if self.proto == "udp":
            cmd.append("-u")
        return cmd


def iperf_block_bytes(rate_mbit: float, proto: str = "tcp") -> int | None:
    """iperf3's write size for a paced flow: it paces in whole writes (128 KB for TCP by
    default: at 2 Mbit/s a 1 s interval reads 2.1 or 1.05 Mbit/s, a dip that is not there),
    so about 50 writes per second, 1 KB to 128 KB. None: iperf3's own (unpaced, or UDP)."""
    if rate_mbit <= 0 or proto != "tcp":
        return None
    return int(min(128 * 1024, max(1024, rate_mbit * 1e6 / 8 / 50)))


def plan_flows(batches, clients: list[str], servers: list[str], seed: int) -> list[Flow]:
    """The flows of a run's batches (``registry.FlowBatch``; same seed -> same flows), in
    start order: a batch's first flow at its ``start_s``, the others evenly over its
    ``spread_s``, each up to 0.2 s later at random; clients at random, servers in turn."""
    rng = random.Random(seed)
    flows: list[Flow] = []
    for batch in batches:
        for j in range(batch.count):
            i = len(flows)
            start = batch.start_s + (batch.spread_s * j / max(1, batch.count - 1)
                                     if batch.count > 1 else 0.0)
            start += rng.uniform(0.0, 0.2)
            client, server = rng.choice(clients), servers[i % len(servers)]
            flows.append(Flow(f"f{i + 1:03d}", client, server, IPERF_SERVER_PORT0 + i,
                              IPERF_CLIENT_PORT0 + i, round(start, 3), batch.duration_s,
                              batch.rate_mbit, batch.proto))
    flows.sort(key=lambda f: f.start_s)
    return flows


class Traffic:
    """iperf3 servers (one per flow and port) and paced clients, started on schedule."""

    def __init__(self, tb: Testbed, flows: list[Flow] = ()):
        self.tb, self.flows = tb, list(flows)
        self.dir = tb.logs / "iperf"
        self.dir.mkdir(exist_ok=True)
        self.clients: dict[str, object] = {}

    def start_servers(self, flows: list[Flow] | None = None, wait: bool = False) -> None:
        """A one-shot iperf3 server per flow (default: every flow); ``wait``: until each
        listens."""
        flows = self.flows if flows is None else flows
        for f in flows:
            self.tb.spawn(f"iperf-s-{f.flow_id}", ["iperf3", "-s", "-1", "-p", str(f.server_port)],
                          host=self.tb.net[f.server])
        if wait:
            for f in flows:
                wait_for(f"iperf3 server of {f.flow_id} on {f.server}:{f.server_port}",
                         lambda: listening(self.tb.net[f.server], f.server_port), 10, 0.05)

    def start(self, f: Flow, at: float | None = None) -> None:
        """Start ``f``'s client; ``at``: when it really starts (seconds of the run), which
        its record then says (the runner may start a flow late, after a slow event)."""
        if f in self.flows:
            self.flows.remove(f)
        if at is not None:
            f = replace(f, start_s=round(at, 3))
        self.flows.append(f)
        self.clients[f.flow_id] = self.tb.spawn(
            f"iperf-c-{f.flow_id}", f.iperf_command(str(self.dir / f"{f.flow_id}.json")),
            host=self.tb.net[f.client])

    def add(self, flows: list[Flow]) -> None:
        """Start ``flows`` now: their servers, once they listen their clients."""
        self.start_servers(flows, wait=True)
        for f in flows:
            self.start(f)

    def running(self) -> int:
        return sum(1 for p in self.clients.values() if p.poll() is None)

    def records(self) -> list[dict]:
        return [f.record() for f in self.flows]

    def results(self) -> dict:
        return {f.flow_id: report.load_iperf_json(self.dir / f"{f.flow_id}.json")
                for f in self.flows}


class Apps:
    """Real applications (``scenarios.workloads``): servers on every server host, one client
    process per planned connection, started on schedule; outcomes in logs/apps/."""

    def __init__(self, tb: Testbed, planned: list[dict]):
        self.tb, self.planned = tb, planned
        self.dir = tb.logs / "apps"
        self.dir.mkdir(exist_ok=True)
        self.out = self.dir / "outcomes.jsonl"
        self.clients: dict[str, object] = {}

    def start_servers(self) -> None:
        if not self.planned:
            return
        from agents.apps import make_files
        www = self.dir / "www"
        make_files(str(www))
        servers = sorted({a["server"] for a in self.planned})
        for s in servers:
            host = self.tb.net[s]
            # every ICMP error counts: the kernel's rate limit would drop some
            host_checked(host, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"],
                         "turning off the ICMP rate limit")
            run = self.dir / s
            run.mkdir(exist_ok=True)
            for name, cmd in workloads.server_commands(str(www), str(run), self.planned).items():
                self.tb.spawn(f"app-{s}-{name}", cmd, host=host)
        for s in servers:
            wait_for(f"the application servers on {s}",
                     lambda: all(f":{p} " in self.tb.net[s].cmd(f"ss -Hln {kind} sport = :{p}")
                                 for kind, p in (("-t", workloads.HTTP_PORT),
                                                 ("-t", workloads.HALFCLOSE_PORT),
                                                 ("-u", workloads.UDP_PORT))), 15)

    def start(self, app: dict) -> None:
        self.clients[app["conn_id"]] = self.tb.spawn(
            f"app-{app['conn_id']}", workloads.client_command(app, str(self.out)),
            host=self.tb.net[app["client"]])

    def running(self) -> int:
        return sum(1 for p in self.clients.values() if p.poll() is None)

    def results(self) -> list[dict]:
        if not self.planned:
            return []
        from scenarios.report import load_apps
        records, _ = load_apps(self.out) if self.out.exists() else ([], 0)
        return workloads.outcomes(self.planned, records)


def listening(host, port: int, proto: str = "tcp") -> bool:
    """A socket in Mininet host ``host`` listens on (tcp) or is bound to (udp) ``port``."""
    out, _, code = host.pexec(["ss", "-Hltn" if proto == "tcp" else "-Hlun", f"sport = :{port}"])
    return code == 0 and bool(out.strip())


def start_size_servers(tb: Testbed, hosts, ports=(arrivals_mod.ARRIVAL_PORT,)) -> list:
    """A size server (``agents.loadgen serve``) on every host of ``hosts``, on ``ports``;
    returns once each listens."""
    cmd = [sys.executable, "-m", "agents.loadgen", "serve"]
    cmd += [a for p in ports for a in ("--port", str(p))]
    procs = [tb.spawn(f"loadgen-{h}", cmd, host=tb.net[h]) for h in hosts]
    for h in hosts:
        wait_for(f"the size server on {h}",
                 lambda: all(listening(tb.net[h], p) for p in (ports[0], ports[-1])), 15, 0.05)
    return procs


class Arrivals:
    """Open-loop short connections (``scenarios.arrivals``): one generator per client host
    and batch (``agents.loadgen``), started at the batch's start; plans, outcomes and the
    generators' summaries in ``out`` (default logs/arrivals/)."""

    def __init__(self, tb: Testbed, planned: list, batches, out=None):
        self.tb, self.planned, self.batches = tb, planned, batches
        self.t0_wall: float | None = None     # the run's start (unix time), set by the runner
        self.dir = out if out is not None else tb.logs / "arrivals"
        self.clients: dict[str, object] = {}

    def start_servers(self) -> None:
        """The size servers of the planned connections' server hosts."""
        if not self.planned:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        import pandas as pd
        pd.DataFrame([vars(a) for a in self.planned]).to_csv(self.dir / "plan.csv", index=False)
        start_size_servers(self.tb, sorted({a.server for a in self.planned}))

    def start(self, batch: int) -> None:
        start = self.batches[batch].start_s
        by_client: dict[str, list] = {}
        for a in self.planned:
            if a.batch == batch:
                by_client.setdefault(a.client, []).append(a)
        self.dir.mkdir(parents=True, exist_ok=True)
        for client, conns in sorted(by_client.items()):
            tag = f"{client}-b{batch}"
            plan = self.dir / f"plan-{tag}.jsonl"
            plan.write_text("".join(json.dumps(a.plan_line(start)) + "\n" for a in conns))
            self.clients[tag] = self.tb.spawn(
                f"loadgen-{tag}", [sys.executable, "-m", "agents.loadgen", "run", "--plan",
                                   str(plan), "--out", str(self.dir / f"out-{tag}.jsonl"),
                                   "--summary", str(self.dir / f"summary-{tag}.json")],
                host=self.tb.net[client])

    def running(self) -> int:
        return sum(1 for p in self.clients.values() if p.poll() is None)

    def wait(self, timeout: float) -> bool:
        """Until every generator started has finished (False: some did not in time)."""
        try:
            wait_for("the generators", lambda: self.running() == 0, timeout, 0.1)
        except TestbedFailure:
            return False
        return True

    def stop(self) -> None:
        """Ask the generators still running to record what they have (SIGTERM)."""
        for p in self.clients.values():
            if p.poll() is None:
                p.terminate()
        for p in self.clients.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def results(self) -> list[dict]:
        if not self.planned:
            return []
        records = []
        for path in sorted(self.dir.glob("out-*.jsonl")):
            records += report.load_apps(path)[0]
        return arrivals_mod.outcomes(self.planned, records, self.t0_wall)

    def summary(self) -> dict:
        """The generators' own figures: concurrency reached, lateness, errors."""
        docs = []
        for path in sorted(self.dir.glob("summary-*.json")):
            try:
                docs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                pass
        errors: dict[str, int] = {}
        for d in docs:
            for k, v in d.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        return {"generators": len(docs), "planned": len(self.planned),
                "completed": sum(d.get("completed", 0) for d in docs),
                "max_concurrent_per_client": max((d.get("max_concurrent", 0) for d in docs),
                                                 default=0),
                "max_concurrent": sum(d.get("max_concurrent", 0) for d in docs),  # peaks summed
                "max_late_ms": max((d.get("max_late_ms", 0) for d in docs), default=0),
                "errors": errors}
