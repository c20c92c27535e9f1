"""A running testbed: Mininet net, os-ken controller, LB agents and NF services.

``Testbed`` is a context manager. On entry it takes the machine-wide lock, cleans what an
earlier crashed run left behind, and brings every part up, checking each step; on exit
(normal, Ctrl-C or failure) it stops every process it started, by PID, and the net.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from agents.conntrack import CtTimeouts
from agents.lb import query
from topo import testbed as topo
from topo.testbed import TestbedParams, ip_of, mac_of, next_free_name

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
RUN_DIR = Path("/run/chainlb")
PID_DIR = RUN_DIR / "pids"
REST = "http://127.0.0.1:8080"
SUPERVISE_EVERY = 0.05   # seconds between the controller supervisor's checks
CRASH_LOOP, CRASH_LOOP_S = 5, 30.0   # restarts within that many seconds: the supervisor gives up
CONTROLLER_BACK_S = 15.0   # REST calls wait this long for a restarting controller
OUR_COMMANDS = ("agents.lb", "ryu_apps.launch", "iperf3", "mininet:", "agents.apps", "agents.loadgen",
                "nginx")


def say(*args, **kw) -> None:
    """print(), but a run goes on (and cleans up) when its output is gone: the reader of a
    pipe died (``| tee log`` with Ctrl-C), or the terminal closed. Output then goes nowhere."""
    to_stderr = kw.get("file") is sys.stderr
    try:
        print(*args, **kw, flush=True)
    except OSError:                   # BrokenPipeError, EIO: stop writing to it
        devnull = open(os.devnull, "w")
        if to_stderr:
            sys.stderr = devnull
        else:
            sys.stdout = devnull


class Interrupted(KeyboardInterrupt):
    """The run was told to stop: Ctrl-C (SIGINT), SIGTERM (timeout, systemd, CI) or SIGHUP
    (the terminal closed). Handled as Ctrl-C is: cleanup, results written, ``interrupted``."""


def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> None:
    """Each of ``signals`` raises ``Interrupted`` once; further ones while the run cleans up
    are ignored (its cleanup is bounded and must finish)."""
    state = {"raised": False}

    def handler(signum, frame):
        if state["raised"]:
            return
        state["raised"] = True
        raise Interrupted(signal.Signals(signum).name)
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:     # (nohup: SIGHUP stays ignored)
            signal.signal(sig, handler)


class TestbedFailure(RuntimeError):
    """A part of the testbed did not come up or misbehaved (message says which)."""
    __test__ = False


class TestbedBusy(TestbedFailure):
    """Another testbed run holds this machine (only one network can run at a time)."""


def wait_for(what: str, check, timeout: float, interval: float = 0.1):
    """Poll ``check()`` until it returns a truthy value; raise TestbedFailure on timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except TestbedFailure:
            raise
        except Exception as e:          # noqa: BLE001 - the condition is not met yet
            last_error = e
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise TestbedFailure(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def run_checked(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise TestbedFailure(f"{what} failed ({' '.join(cmd)}): {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def host_checked(host, cmd: list[str], what: str) -> str:
    out, err, code = host.pexec(cmd, cwd=str(ROOT))
    if code != 0:
        raise TestbedFailure(f"{what} on {host.name} failed (exit {code}): {(err or out).strip()}")
    return out


class Lock:
    """Only one testbed run per machine (names, OVS bridges and namespaces would clash)."""

    def __init__(self, path: Path = RUN_DIR / "lock"):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = open(self.path, "a+")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fd.seek(0)
            holder = self.fd.read().strip() or "unknown"
            self.fd.close()
            raise TestbedBusy(
                f"another testbed run is in progress (pid {holder}); only one network can run "
                f"on a machine at a time. Wait for it to finish.") from None
        self.fd.seek(0)
        self.fd.truncate()
        self.fd.write(str(os.getpid()))
        self.fd.flush()
        return self

    def __exit__(self, *exc):
        self.fd.seek(0)
        self.fd.truncate()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.fd.close()


def cleanup_leftovers(log=say) -> list[str]:
    """Remove what an earlier run of this project left: its processes, bridge and links."""
    done = []
    PID_DIR.mkdir(parents=True, exist_ok=True)
    for pidfile in PID_DIR.glob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            cmdline = ""
        if any(c in cmdline for c in OUR_COMMANDS):
            try:
                os.kill(pid, signal.SIGKILL)
                done.append(f"killed {pidfile.stem} (pid {pid})")
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
    if subprocess.run(["ovs-vsctl", "br-exists", topo.SWITCH], capture_output=True).returncode == 0:
        run_checked(["ovs-vsctl", "--if-exists", "del-br", topo.SWITCH], "removing bridge gw")
        done.append("removed OVS bridge gw")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == topo.CLUSTER_BRIDGE:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            done.append(f"removed bridge {name}")
        elif name.startswith((f"{topo.SWITCH}-eth", f"{topo.CLUSTER_BRIDGE}-")):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            done.append(f"removed link {name}")
    for sock in RUN_DIR.glob("*.sock"):
        sock.unlink(missing_ok=True)
    for line in done:
        log(f"cleanup: {line}")
    return done


def check_ovs() -> None:
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode != 0:
        raise TestbedFailure("Open vSwitch is not running: run `sudo make setup` (it starts the "
                             "OVS daemons with the userspace datapath)")


class Testbed:
    __test__ = False

    def __init__(self, params: TestbedParams, mode: str, run_dir: Path, chain_loss_pct: int = 0,
                 log=say, lock: "Lock | None" = None, timeouts: CtTimeouts = CtTimeouts(),
                 trace_first: bool = False):
        self.params = params.validate()
        self.trace_first = trace_first        # the agents note first-packet timings
        self.timeouts = timeouts              # the NFs' conntrack and the LB nodes' alike
        self.mode = mode
        self.run_dir = Path(run_dir)
        self.logs = self.run_dir / "logs"
        self.chain_loss_pct = chain_loss_pct
        self.log = log
        self.net = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.nfs: list[str] = []
        self.lbs: list[str] = []
        self.nf_dumps: dict[str, dict | None] = {}    # taken before an NF is killed
        self.killed_nfs: dict[str, float] = {}        # NF -> when it stopped forwarding
        self.controller_restarts: list[dict] = []     # by the supervisor
        self.controller_outages: list[dict] = []      # kill_controller's measurements
        self._closing = threading.Event()
        self._ctl_lock = threading.RLock()
        self._ctl_given_up = False
        self._supervisor: threading.Thread | None = None
        self._watchers: list[threading.Thread] = []   # kill_controller(wait=False)'s
        self.own_lock = lock is None          # a caller holding the lock passes it in
        self.lock = lock or Lock()
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self):
        if self.own_lock:
            self.lock.__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        check_ovs()
        cleanup_leftovers(self.log)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secret_file = RUN_DIR / "secret"
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        p = self.params
        self.nfs = [f"nf{i}" for i in range(1, p.nfs + 1)]
        self.lbs = [f"lb{i}" for i in range(1, p.lbs + 1)]
        self.log(f"building the net: {p.clients} clients, {p.servers} servers, {p.lbs} LB nodes, "
                 f"{p.nfs} NFs, L={p.chain_len}, mode {self.mode}"
                 + (f" ({p.variant})" if self.mode == "chain" else ""))
        self._start_controller()          # first, so that Mininet finds it listening
        self.net = topo.build_net(p)
        self.net.start()
        topo.set_controller_backoff()
        for h in self.net.hosts:
            self._pidfile(f"host-{h.name}", h.pid)
        wait_for("the switch to connect to the controller",
                 lambda: self.rest("GET", "/health").get("switch_connected"), 20)
        for nf in self.nfs:
            self._start_nf(nf)
        for lb in self.lbs:
            self._start_agent(lb)
        self.wait_agents_current(20)
        self._check_reachability()
        self.log(f"testbed up in {time.monotonic() - self.t0:.1f} s")

    def __exit__(self, *exc):
        try:
            self.stop_processes()
            if self.net is not None:
                self.log("stopping the net")
                try:
                    self.net.stop()
                except Exception as e:      # noqa: BLE001 - keep cleaning
                    self.log(f"net.stop: {e}")
                self.net = None
            cleanup_leftovers(lambda m: None)
        finally:
            if self.own_lock:
                self.lock.__exit__(*exc)
        return False

    def stop_processes(self) -> None:
        self._closing.set()                   # the supervisor restarts nothing from here on,
        for t in self._watchers:              # and a restore being measured stops waiting
            t.join(timeout=5)
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            (PID_DIR / f"{name}.pid").unlink(missing_ok=True)
        self.procs.clear()

    # ------------------------------------------------------------------ parts

    def _pidfile(self, name: str, pid: int) -> None:
        (PID_DIR / f"{name}.pid").write_text(str(pid))

    def spawn(self, name: str, cmd: list[str], host=None, append: bool = False) -> subprocess.Popen:
        """Start ``cmd`` (in Mininet host ``host``'s netns, or here), logging to
        logs/NAME.log; the testbed ends it (by PID) when it closes, on every exit path."""
        out = open(self.logs / f"{name}.log", "a" if append else "w")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        if host is None:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        else:
            proc = host.popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
        self.procs[name] = proc
        self._pidfile(name, proc.pid)
        return proc

    def _start_controller(self) -> None:
        p = self.params
        cfg = {
            "secret_file": str(self.secret_file), "chain_len": p.chain_len, "mode": self.mode,
            "heartbeat_timeout": 0.8,          # fast failover, no false removals under load
            "edge_ports": {h: {"mac": mac_of(h), "port": topo.port_number(h)}
                           for h in topo.initial_hosts(p) if topo.kind_of(h) in ("client", "server")},
            "lbs": [self._member(lb) for lb in self.lbs],
            "nfs": [self._member(nf) for nf in self.nfs],
        }
        path = self.run_dir / "controller.json"
        path.write_text(json.dumps(cfg, indent=1))
        self._ctl_cmd = [PY, "-m", "ryu_apps.launch", "--config", str(path),
                         "--state", str(self.run_dir / "controller.state.json")]
        proc = self.spawn("controller", self._ctl_cmd)
        wait_for("the controller's REST API", lambda: proc.poll() is None and self.rest("GET", "/health"),
                 20)
        if proc.poll() is not None:
            raise TestbedFailure(f"the controller exited: see {self.logs / 'controller.log'}")
        self._supervisor = threading.Thread(target=self._supervise, name="controller-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        """Restart the controller whenever it exits, as a service manager would: at once,
        under the same command (it resumes from its state file). Gives up, and lets
        ``check_alive`` fail the run, after CRASH_LOOP restarts within CRASH_LOOP_S."""
        while not self._closing.wait(SUPERVISE_EVERY):
            with self._ctl_lock:
                proc = self.procs.get("controller")
                if proc is None or proc.poll() is None or self._closing.is_set():
                    continue
                now = time.monotonic()
                recent = [r for r in self.controller_restarts if now - r["at"] < CRASH_LOOP_S]
                if len(recent) >= CRASH_LOOP:
                    self._ctl_given_up = True
                    continue
                self.log(f"the controller exited (status {proc.returncode}): restarting it")
                self.spawn("controller", self._ctl_cmd, append=True)
                self.controller_restarts.append({"at": now, "wall": time.time(),
                                                 "status": proc.returncode})

    def kill_controller(self, wait: bool = True, timeout: float = 30.0) -> dict | None:
        """SIGKILL the controller; the supervisor brings it back. Measures until it serves
        its REST API, the switch is connected and every LB agent runs its new epoch
        (``controller_outages``: seconds ``rest_s``, ``switch_s``, ``agents_s``, and the
        epochs); ``wait``: returns that record once it is back, else at once (the
        measurement goes on beside the run)."""
        with self._ctl_lock:
            proc = self.procs.get("controller")
            if proc is None or proc.poll() is not None:
                raise TestbedFailure("the controller is not running")
            before = self.rest("GET", "/health", wait_restart=0)["epoch"]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.log(f"killed the controller (pid {proc.pid}, epoch {before})")
        if wait:
            return self._measure_restore(proc, t0, before, timeout)
        t = threading.Thread(target=self._measure_restore, args=(proc, t0, before, timeout),
                             name="controller-restore", daemon=True)
        t.start()
        self._watchers.append(t)
        return None

    def outages(self, timeout: float = 30.0) -> list[dict]:
        """kill_controller's records, once the restores being measured have ended."""
        for t in self._watchers:
            t.join(timeout=timeout)
        return list(self.controller_outages)

    def _measure_restore(self, proc, t0: float, before: int, timeout: float) -> dict:
        out: dict = {"epoch_before": before}
        self.controller_outages.append(out)

        def unless_closing(check):
            def f():
                if self._closing.is_set():
                    raise TestbedFailure("the testbed closed first")
                return check()
            return f
        try:
            wait_for("the controller to come back", unless_closing(
                lambda: self.procs["controller"] is not proc and self._health_or_none()),
                timeout, 0.02)
            out["rest_s"] = round(time.monotonic() - t0, 3)
            wait_for("the switch to reconnect to the restarted controller", unless_closing(
                lambda: (self._health_or_none() or {}).get("switch_connected")), timeout, 0.02)
            out["switch_s"] = round(time.monotonic() - t0, 3)
            view = self.wait_agents_current(timeout)
            out["agents_s"] = round(time.monotonic() - t0, 3)
            out["epoch_after"] = view["epoch"]
        except TestbedFailure as e:
            out["error"] = str(e)
            self.log(f"the controller did not come back: {e}")
            return out
        self.log(f"controller back: REST after {out['rest_s']} s, switch {out['switch_s']} s, "
                 f"every agent at epoch {out['epoch_after']} (was {before}) after "
                 f"{out['agents_s']} s")
        return out

    def _health_or_none(self) -> dict | None:
        try:
            return self.rest("GET", "/health", wait_restart=0)
        except (TestbedFailure, OSError):
            return None

    @staticmethod
    def _member(name: str) -> dict:
        member = {"name": name, "mac": mac_of(name), "port": topo.port_number(name)}
        if topo.kind_of(name) == "lb":
            member["cluster_mac"] = topo.cluster_mac_of(name)
        return member

    def _start_nf(self, nf: str) -> None:
        host_checked(self.net[nf], [PY, "-m", "agents.nf", "start", "--name", nf,
                                    "--ct-timeouts", self.timeouts.spec()],
                     f"starting NF service {nf}")

    def _start_agent(self, lb: str, restart: bool = False) -> None:
        host = self.net[lb]
        if self.chain_loss_pct and not restart:     # (the host keeps its rules)
            # netem is unavailable: drop chain frames at random as they leave the LB host
            rules = self.logs / f"{lb}.chainloss.nft"
            chains = "".join(
                f"  chain egress{i} {{\n"
                f"    type filter hook egress device {intf} priority 0;\n"
                f"    ether type 0x88b5 numgen random mod 100 < {self.chain_loss_pct} counter drop\n"
                "  }\n" for i, intf in enumerate((topo.intf_of(lb), topo.cluster_intf_of(lb))))
            rules.write_text(f"table netdev chainloss {{\n{chains}}}\n")
            host_checked(host, ["nft", "-f", str(rules)], f"installing chain-frame loss on {lb}")
        self.spawn(lb, [PY, "-m", "agents.lb", "--name", lb, "--intf", topo.intf_of(lb),
                         "--cluster-intf", topo.cluster_intf_of(lb),
                         "--secret-file", str(self.secret_file), "--mode", self.mode,
                         "--variant", self.params.variant, "--fastpath", self.params.fastpath,
                         "--run-dir", str(RUN_DIR), "--log-dir", str(self.logs),
                         "--ct-timeouts", self.timeouts.spec()]
                   + (["--trace-first"] if self.trace_first else []), host=host, append=restart)

    def wait_agents_current(self, timeout: float) -> dict:
        """Until every LB in the view heartbeats the current epoch."""
        def current():
            self.check_alive()
            v = self.rest("GET", "/view")
            lbs = v["lbs"]
            return v if lbs and all(m["reported_epoch"] == v["epoch"] and m["status"] == "up"
                                    for m in lbs) else None
        return wait_for("every LB agent to run the current view", current, timeout)

    def check_alive(self) -> None:
        """Raise if an LB agent that should run has exited, or the controller did and its
        supervisor gave up restarting it."""
        for name in (["controller"] if self._ctl_given_up else []) + self.lbs:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text().strip().splitlines()[-3:]
                raise TestbedFailure(f"{name} exited (status {proc.returncode}): "
                                     + " | ".join(tail) + f"  [log: {self.logs / name}.log]")

    def _check_reachability(self) -> None:
        c1 = self.net["c1"]
        wait_for("c1 to reach s1 through the LB and NF path",
                 lambda: c1.pexec(["ping", "-c1", "-W1", ip_of("s1")])[2] == 0, 20, 0.2)

    # ------------------------------------------------------------------ REST

    def rest(self, method: str, path: str, body: dict | None = None,
             wait_restart: float | None = None) -> dict:
        """A call of the controller's REST API. While the supervisor restarts the controller
        (the connection is refused, so nothing was done), it is tried again for up to
        ``wait_restart`` seconds (default CONTROLLER_BACK_S)."""
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + (CONTROLLER_BACK_S if wait_restart is None
                                       else wait_restart)
        while True:
            req = urllib.request.Request(REST + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.loads(r.read() or b"{}")
            except urllib.error.HTTPError as e:
                try:
                    msg = json.loads(e.read()).get("error", str(e))
                except ValueError:
                    msg = str(e)
                raise TestbedFailure(f"controller refused {method} {path}: {msg}") from None
            except urllib.error.URLError as e:
                if not (isinstance(e.reason, ConnectionRefusedError)
                        and self._supervisor is not None and not self._ctl_given_up
                        and not self._closing.is_set() and time.monotonic() < deadline):
                    raise
                time.sleep(0.05)

    # ------------------------------------------------------------------ pool changes

    def add_nf(self, name: str = "") -> str:
        name = name or next_free_name([h.name for h in self.net.hosts], "nf")
        host = topo.add_host_live(self.net, name)
        self._pidfile(f"host-{name}", host.pid)
        self._start_nf(name)
        self.rest("POST", "/nfs", self._member(name))
        self.nfs.append(name)
        return name

    def drain_nf(self, name: str) -> None:
        self.rest("POST", f"/nfs/{name}/drain")

    def remove_nf(self, name: str) -> None:
        self.rest("DELETE", f"/nfs/{name}")

    def kill_nf(self, name: str) -> None:
        """The NF stops forwarding at once (its service dies), and nobody is told: the
        controller's probes find out (``ryu_apps.policy``)."""
        if name not in self.nfs:
            raise TestbedFailure(f"no NF {name!r} (NFs: {', '.join(self.nfs)})")
        self.nf_dumps[name] = self.dump_nf(name)
        killed = time.time()
        host_checked(self.net[name], ["sysctl", "-qw", "net.ipv4.ip_forward=0"],
                     f"stopping NF {name}")
        self.killed_nfs[name] = killed
        host_checked(self.net[name], [PY, "-m", "agents.nf", "stop"], f"stopping NF {name}")

    def nf_detections(self) -> dict[str, float | None]:
        """Per NF killed: seconds from its death to the controller's marking it failed
        (None: not marked yet)."""
        now = time.time()
        nfs = {n["name"]: n for n in self.rest("GET", "/view")["nfs"]}
        out = {}
        for name, killed in self.killed_nfs.items():
            age = (nfs.get(name) or {}).get("failed_age")
            out[name] = None if age is None else round(now - age - killed, 3)
        return out

    def kill_lb(self, name: str) -> None:
        """SIGKILL the agent; the controller notices by missed heartbeats."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            raise TestbedFailure(f"no running LB agent {name!r}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.lbs.remove(name)

    def restart_lb(self, name: str, timeout: float = 20.0) -> None:
        """SIGKILL the agent and start it again under its name at once, as a service manager
        restarts a crashed service: a new process that holds nothing (its chain node is a new
        life of the name). If the controller removed the node meanwhile (missed heartbeats),
        it is admitted again under its name. Returns once it serves the current view."""
        proc = self.procs.get(name)
        if name not in self.lbs or proc is None or proc.poll() is not None:
            raise TestbedFailure(f"no running LB agent {name!r}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self._start_agent(name, restart=True)
        self._wait_serving(name, "its restart", timeout, admit=True)

    def _wait_serving(self, name: str, after: str, timeout: float, admit: bool = False) -> None:
        """Until LB ``name`` is up at the current epoch, by the controller and by the agent
        itself (the controller's record may still be the killed process's last heartbeat,
        and remove the node a moment later); ``admit``: if the controller removed it
        meanwhile (missed heartbeats), admit it again under its name."""
        def serving():
            self.check_alive()
            v = self.rest("GET", "/view")
            m = next((m for m in v["lbs"] if m["name"] == name), None)
            if m is None:
                if admit:
                    self.rest("POST", "/lbs", self._member(name))
                return None
            if m["status"] != "up" or m["reported_epoch"] != v["epoch"]:
                return False
            try:                        # the new process, over its own control socket
                return query(str(RUN_DIR), name, "status")["epoch"] == v["epoch"]
            except (OSError, ValueError, KeyError):
                return False            # still starting: its socket is not there yet
        wait_for(f"{name} to serve again after {after}", serving, timeout, 0.1)

    def readmit_lb(self, name: str, timeout: float = 20.0) -> None:
        """SIGKILL the agent, wait until the controller removes the node (missed heartbeats),
        then admit it again under its name and start its agent: a new life of the name in a
        later view (``LBInfo.since``). Returns once it serves the current view."""
        proc = self.procs.get(name)
        if name not in self.lbs or proc is None or proc.poll() is not None:
            raise TestbedFailure(f"no running LB agent {name!r}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(f"the controller to remove {name}",
                 lambda: name not in {m["name"] for m in self.rest("GET", "/view")["lbs"]},
                 timeout, 0.1)
        self.rest("POST", "/lbs", self._member(name))
        self._start_agent(name, restart=True)
        self._wait_serving(name, "its re-admission", timeout)

    def add_lb(self, name: str = "") -> str:
        name = name or next_free_name([h.name for h in self.net.hosts], "lb")
        host = topo.add_host_live(self.net, name)
        self._pidfile(f"host-{name}", host.pid)
        self.rest("POST", "/lbs", self._member(name))
        self._start_agent(name)
        self.lbs.append(name)
        return name

    def partition_lb(self, name: str) -> None:
        """LB node ``name`` loses the LB cluster network (its ``-eth1`` down); its gateway
        link and heartbeats stay up. Its peers and it reach each other through the gateway
        once each notices (``agents.paths``)."""
        self._cluster_link(name, "down")

    def heal_lb(self, name: str) -> None:
        """LB node ``name``'s cluster interface up again."""
        self._cluster_link(name, "up")

    def _cluster_link(self, name: str, state: str) -> None:
        if name not in self.lbs:
            raise TestbedFailure(f"no LB node {name!r} (LB nodes: {', '.join(self.lbs)})")
        host_checked(self.net[name], ["ip", "link", "set", topo.cluster_intf_of(name), state],
                     f"setting {name}'s cluster interface {state}")

    def dump_nf(self, name: str) -> dict | None:
        out = self.logs / f"{name}.nf.json"
        try:
            host_checked(self.net[name], [PY, "-m", "agents.nf", "dump", "--name", name,
                                          "--out", str(out)], f"dumping NF {name}")
        except (TestbedFailure, KeyError) as e:
            self.log(f"warning: {e}")
            return None
        return json.loads(out.read_text())
