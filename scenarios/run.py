"""Run one named scenario in one LB mode and write its results folder (``run_scenario``);
``matrix`` runs every scenario in every mode, continuing past failures, then compares.

results/<scenario>/<run-id>/: flows.csv, summary.csv, params.json, timeline.csv (table size
and view per second), logs/ (controller, agents, decisions, iperf3 JSON, NF dumps);
results/latest points at the newest run.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from scenarios import arrivals as arrivals_mod, registry, report, workloads
from scenarios.results import RESULTS, new_run_dir, versions
from scenarios.traffic import Apps, Arrivals, Traffic, plan_flows
from agents.lb import query
from agents.conntrack import CtTimeouts
from scenarios.testbed import RUN_DIR, Lock, Testbed, TestbedBusy, TestbedFailure, say
from topo.testbed import TestbedParams, hosts_of

def _do_event(tb: Testbed, ev: registry.Event) -> str:
    if ev.action == "add_nf":
        return tb.add_nf(ev.target)
    if ev.action == "add_lb":
        return tb.add_lb(ev.target)
    if ev.action == "kill_controller":
        tb.kill_controller(wait=False)     # the run goes on while it is down
        return ""
    getattr(tb, ev.action)(ev.target)
    return ev.target


def run_scenario(name: "str | registry.Scenario", mode: str = "chain", seed: int = 1,
                 params: TestbedParams | None = None, cli: bool = False,
                 time_scale: float = 1.0, log=say, timeouts: CtTimeouts | None = None,
                 overrides: dict[str, str] | None = None) -> Path:
    """Run a scenario (a built-in's name, or a ``Scenario`` such as a file's) once;
    ``overrides``: sizes from the command line (``scenarios.params.parse_set``), which raise
    ``ParamError`` when not valid."""
    from scenarios.params import apply
    base = registry.get(name) if isinstance(name, str) else name
    scenario, sized = apply(base, overrides or {})
    if time_scale != 1.0:
        scenario = scenario.scaled(time_scale)
    params = (params or sized).validate()
    timeouts = timeouts or CtTimeouts()
    with Lock() as lock:              # before anything is written: a refused run leaves nothing
        return _run(scenario, mode, seed, params, cli, time_scale, log, lock, timeouts,
                    overrides)


def _run(scenario, mode, seed, params, cli, time_scale, log, lock, timeouts,
         overrides) -> Path:
    name = scenario.name
    clients, servers = hosts_of(params, "client"), hosts_of(params, "server")
    flows = plan_flows(scenario.batches, clients, servers, seed)
    apps = workloads.plan_apps(scenario.apps, clients, servers, seed)
    try:
        arrived = arrivals_mod.plan_arrivals(scenario.arrivals, clients, servers, seed)
    except ValueError as e:
        from scenarios.params import ParamError
        raise ParamError(f"scenario {name}: {e}") from None
    run_id, run_dir = new_run_dir(name, mode)
    log(f"== scenario {name} ({scenario.description}), mode {mode}, seed {seed}")
    log(f"   results: {run_dir}")
    meta = {"scenario": name, "mode": mode, "run_id": run_id, "variant": params.variant,
            "fastpath": params.fastpath}
    (run_dir / "params.json").write_text(json.dumps({
        **meta, "seed": seed, "time_scale": time_scale, "testbed": params.asdict(),
        "chain_loss_pct": scenario.chain_loss_pct, "flows": [f.record() for f in flows], "apps": apps,
        "arrivals": [vars(b) for b in scenario.arrivals], "arrivals_planned": len(arrived),
        "events": [vars(e) for e in scenario.events], "overrides": dict(overrides or {}),
        "conntrack_timeouts": timeouts.asdict(), "lb_timeouts": timeouts.lb_timeouts_by_state(),
        "versions": versions(),
    }, indent=1))
    events_done: list[tuple[float, str, str]] = []
    timeline: list[dict] = []
    failure = None
    with Testbed(params, mode, run_dir, scenario.chain_loss_pct, log, lock=lock,
                 timeouts=timeouts) as tb:
        traffic = Traffic(tb, flows)
        traffic.start_servers()
        programs = Apps(tb, apps)
        programs.start_servers()
        load = Arrivals(tb, arrived, scenario.arrivals)
        load.start_servers()
        schedule = sorted([(f.start_s, "flow", f) for f in flows]
                          + [(a["start_s"], "app", a) for a in apps]
                          + [(b.start_s, "arrivals", i) for i, b in enumerate(scenario.arrivals)
                             if any(a.batch == i for a in arrived)]
                          + [(e.at_s, "event", e) for e in scenario.events],
                          key=lambda x: (x[0], x[1] != "event"))
        t0 = time.monotonic()
        load.t0_wall = time.time()
        next_sample = 0.0
        end = scenario.traffic_s + 15.0
        try:
            while True:
                now = time.monotonic() - t0
                while schedule and schedule[0][0] <= now:
                    _, kind, item = schedule.pop(0)
                    if kind == "flow":
                        traffic.start(item, at=now)
                    elif kind == "app":
                        programs.start(item)
                    elif kind == "arrivals":
                        load.start(item)
                    else:
                        target = _do_event(tb, item)
                        events_done.append((round(now, 3), item.action, target))
                        log(f"   t={now:5.1f}s  {item.action} {target}")
                if now >= next_sample:
                    next_sample += 1.0
                    timeline.append(_sample(tb, now))
                    log(f"   t={now:5.1f}s  flows running {traffic.running():3d}/"
                        f"{len(traffic.clients)}"
                        + (f"  apps {programs.running():3d}/{len(programs.clients)}"
                           if apps else "")
                        + (f"  generators {load.running()}/{len(load.clients)}"
                           if arrived else "") + f"  epoch {timeline[-1]['epoch']}  "
                        f"table entries {timeline[-1]['entries']}  deletes {timeline[-1]['deletes']}")
                if not schedule and traffic.running() == 0 and programs.running() == 0 \
                        and load.running() == 0:
                    break
                if now > end:
                    log(f"   t={now:5.1f}s  flows still running past the scenario end: stopping them")
                    break
                time.sleep(min(0.05, max(0.0, (schedule[0][0] - now) if schedule else 0.05)))
            if cli:
                from scenarios.cli import run_cli
                run_cli(tb, run_dir, traffic)
        except (TestbedFailure, KeyboardInterrupt) as e:
            failure = e                   # still collect and write what the run measured
            log(f"   stopping early: {e or 'interrupted'}")
            if cli and isinstance(e, TestbedFailure):
                from scenarios.cli import run_cli
                log(f"scenario failed: {e}; opening the CLI")
                run_cli(tb, run_dir, traffic)
        load.stop()                       # generators past the end record what they have
        detections = _detections(tb, log)
        outages = tb.outages()
        lb_counts = _lb_counts(tb)
        dumps = {nf: tb.nf_dumps[nf] if nf in tb.nf_dumps else tb.dump_nf(nf) for nf in tb.nfs}
        _write_timeline(run_dir, timeline)
    iperf = traffic.results()
    outcomes = programs.results() + load.results()
    if arrived:
        gen = load.summary()
        (run_dir / "arrivals.json").write_text(json.dumps(gen, indent=1))
        log(f"   arrivals: {gen['completed']}/{gen['planned']} completed, at most "
            f"{gen['max_concurrent_per_client']} open at once per client, generators at most "
            f"{gen['max_late_ms']:.0f} ms late, errors {gen['errors'] or 0}")
    flows_df = report.build_flows(meta, traffic.records(), iperf, dumps, apps=outcomes)
    status = (report.STATUS_OK if failure is None else "interrupted"
              if isinstance(failure, KeyboardInterrupt) else f"failed: {failure}")
    summary = report.build_summary(flows_df, events_done, meta, dumps, traffic.records(),
                                   apps=outcomes, iperf=iperf,
                                   status=status, detections=detections,
                                   outages=outages, lb_counts=lb_counts)
    report.write_results(run_dir, flows_df, summary)
    from scenarios.compare import plot_run
    plot_run(run_dir, log)
    log("")
    log(report.format_summary(summary))
    log(f"\nresults: {run_dir}  (flows.csv, summary.csv, params.json, timeline.csv, "
        f"nf_timeline.png, throughput.png, logs/)")
    if failure is not None:
        failure.run_dir = run_dir         # its results are written: a set still lists it
        raise failure
    return run_dir


def _detections(tb: Testbed, log) -> dict:
    """Per NF killed, how long the controller took to mark it failed (None: it did not)."""
    if not tb.killed_nfs:
        return {}
    try:
        found = tb.nf_detections()
    except TestbedFailure as e:
        log(f"   warning: cannot read the NFs' detection times: {e}")
        return dict.fromkeys(tb.killed_nfs)
    for nf, s in found.items():
        log(f"   {nf}: " + (f"detected failed {s:.3f} s after it stopped forwarding"
                            if s is not None else "NOT detected failed"))
    return found


def _lb_counts(tb: Testbed, names=("forwarded", "fast_tx"), timeout: float = 1.0) -> dict:
    """Counters of the LB agents alive now, summed (an agent that does not answer counts
    nothing): by default the data packets forwarded through the agent (``forwarded``) and in
    the kernel (``fast_tx``)."""
    out = dict.fromkeys(names, 0)
    for lb in tb.lbs:
        try:
            counts = query(str(RUN_DIR), lb, "status", timeout=timeout)["counts"]
        except (OSError, ValueError, KeyError):
            continue
        for k in out:
            out[k] += counts.get(k, 0)
    return out


def _sample(tb: Testbed, now: float) -> dict:
    """One timeline row: the view, table entries held (all replicas) and deletes so far."""
    deletes = _lb_counts(tb, ("deletes",), timeout=0.5)["deletes"]
    try:
        v = tb.rest("GET", "/view", wait_restart=0)     # (a controller down: a gap)
    except (TestbedFailure, OSError):
        return {"t_s": round(now, 2), "epoch": None, "entries": None, "deletes": deletes,
                "lbs": "", "nfs": ""}
    return {"t_s": round(now, 2), "epoch": v["epoch"],
            "entries": sum(m.get("entries") or 0 for m in v["lbs"]), "deletes": deletes,
            "lbs": ";".join(f"{m['name']}:{m['status']}" for m in v["lbs"]),
            "nfs": ";".join(f"{n['name']}:{n['state']}" for n in v["nfs"])}


def _write_timeline(run_dir: Path, rows: list[dict]) -> None:
    import pandas as pd
    pd.DataFrame(rows, columns=["t_s", "epoch", "entries", "deletes", "lbs", "nfs"]).to_csv(
        run_dir / "timeline.csv", index=False)


def matrix(out: str | None = None, scenarios: Sequence[str] | None = None,
           modes: Sequence[str] | None = None, runner: Callable | None = None,
           log=say) -> pd.DataFrame:
    """Run every scenario in every mode (continuing past failures), then compare into ``out``.

    Every run is listed in OUT/matrix.csv (scenario, mode, status ok / failed / interrupted / skipped,
    run_dir, error). When another testbed run holds the machine, the remaining runs are
    skipped (they could not start either).
    """
    import pandas as pd
    from agents.modes import MODES
    from scenarios.compare import compare
    runner = runner or run_scenario
    out_dir = Path(out) if out else RESULTS / f"matrix-{datetime.now():%Y%m%d-%H%M%S}"
    scenarios = list(scenarios or registry.SCENARIOS)
    modes = list(modes or MODES)
    done = []
    t0 = time.monotonic()
    busy = False
    interrupted = None
    for name in scenarios:
        for mode in modes:
            if busy or interrupted is not None:
                done.append({"scenario": name, "mode": mode, "status": "skipped",
                             "run_dir": "", "error": "another testbed run held the lock"
                             if busy else "the matrix was interrupted"})
                continue
            latest = RESULTS / "latest"
            before = latest.resolve() if latest.is_symlink() else None
            try:
                run_dir = runner(name, mode)
                done.append({"scenario": name, "mode": mode, "status": "ok",
                             "run_dir": str(run_dir), "error": ""})
            except KeyboardInterrupt as e:   # recorded, then the matrix stops (below)
                interrupted = e
                run_dir = getattr(e, "run_dir", None)
                done.append({"scenario": name, "mode": mode, "status": "interrupted",
                             "run_dir": "" if run_dir is None else str(run_dir), "error": ""})
            except Exception as e:          # noqa: BLE001 - record it and go on
                after = latest.resolve() if latest.is_symlink() else None
                run_dir = after if after is not None and after != before else None
                done.append({"scenario": name, "mode": mode, "status": "failed",
                             "run_dir": "" if run_dir is None else str(run_dir),
                             "error": f"{type(e).__name__}: {e}"})
                log(f"!! {name} / {mode} failed: {e}")
                busy = isinstance(e, TestbedBusy)
                if busy:
                    log("!! another testbed run holds the machine: the matrix stops here")
    out_dir.mkdir(parents=True, exist_ok=True)
    status = pd.DataFrame(done, columns=["scenario", "mode", "status", "run_dir", "error"])
    status.to_csv(out_dir / "matrix.csv", index=False)
    failed = status[status["status"] != "ok"]
    log(f"\nmatrix: {len(status) - len(failed)} of {len(status)} runs ok "
        f"in {time.monotonic() - t0:.0f} s")
    for r in failed.itertuples(index=False):
        log(f"  {r.status}: {r.scenario} / {r.mode}: {r.error}")
    dirs = [d for d in status["run_dir"] if d and (Path(d) / "summary.csv").is_file()]
    if interrupted is not None:
        if dirs:
            compare(dirs, str(out_dir), log)   # what ran is compared, then it stops
        raise interrupted
    if not dirs:
        raise SystemExit(f"error: no run of the matrix produced results (see {out_dir / 'matrix.csv'})")
    return compare(dirs, str(out_dir), log)
