"""Command line: python -m scenarios {run,list,cli,matrix,compare,cleanup} ...

Run by the Makefile (``sudo make scenario NAME=scale-out MODE=chain``).
"""
from __future__ import annotations

import argparse
import os
import sys

from agents.conntrack import CtTimeouts, parse_timeouts
from agents.chain import VARIANTS
from agents.fastpath import FASTPATHS
from agents.modes import MODES
from scenarios import registry
from scenarios.params import (KEYS, ParamError, apply, parse_modes, parse_seeds, parse_set,
                              topology)


def _need_root(what: str) -> None:
    if sys.platform != "linux":
        sys.exit(f"error: {what} needs Linux (Mininet, Open vSwitch, network namespaces)")
    if os.geteuid() != 0:
        sys.exit(f"error: {what} needs root (Mininet and OVS): run it with sudo, "
                 f"e.g. `sudo make scenario NAME=scale-out`")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scenarios")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario (or 'all')")
    r.add_argument("name", nargs="?", help=f"one of: {', '.join(registry.SCENARIOS)}, all")
    r.add_argument("--file", help="a scenario file (TOML, see scenarios/files.py) instead of a name")
    r.add_argument("--mode", default="chain",
                   help=f"LB mode, a comma list, or all: {', '.join(MODES)}")
    r.add_argument("--seed", type=int, default=None, help="one seed (default 1)")
    r.add_argument("--seeds", default=None,
                   help="seeds: a list (1,2,5), a range (1-5) or both; one run each")
    set_help = ("size the scenario: key=value, repeatable; keys: " + ", ".join(KEYS)
                + " (l is the chain length; flows: planned iperf3 flows, spread over the "
                  "scenario's batches in proportion; rate: Mbit/s per flow)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    variant_help = (f"the chain protocol's variant: {' or '.join(VARIANTS)} (default "
                    f"{VARIANTS[0]}; the same as --set variant=...)")
    r.add_argument("--variant", choices=VARIANTS, help=variant_help)
    fastpath_help = (f"the LB nodes' in-kernel fast path: {' or '.join(FASTPATHS)} (default "
                     f"{FASTPATHS[0]}; the same as --set fastpath=...)")
    r.add_argument("--fastpath", choices=FASTPATHS, help=fastpath_help)
    r.add_argument("--cli", action="store_true", help="open the Mininet CLI at the end or on failure")
    r.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every time and duration (0.1..10; e.g. 0.5 for a quick run)")
    ct_help = ("conntrack timeouts of the NFs, and of the LB nodes' connection tracking with "
               "them: name=seconds,... (names: " + ", ".join(CtTimeouts().asdict())
               + "; default: the kernel's)")
    r.add_argument("--ct-timeouts", default="", help=ct_help)
    w = sub.add_parser("sweep", help="run a scenario over the values of one parameter")
    w.add_argument("name", nargs="?", help="a scenario name")
    w.add_argument("--file", help="a scenario file instead of a name")
    w.add_argument("--param", required=True, help=f"the parameter swept: one of {', '.join(KEYS)}")
    w.add_argument("--values", required=True, help="its values, comma-separated (e.g. 1,2,3)")
    w.add_argument("--mode", default="chain", help="a mode, a comma list, or all")
    w.add_argument("--seeds", default="1", help="seeds: 1,2,5 or 1-5")
    w.add_argument("--time-scale", type=float, default=1.0)
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    w.add_argument("--variant", choices=VARIANTS, help=variant_help)
    w.add_argument("--fastpath", choices=FASTPATHS, help=fastpath_help)
    w.add_argument("--ct-timeouts", default="", help=ct_help)
    sub.add_parser("list", help="list scenarios and modes")
    sub.add_parser("cleanup", help="remove what a crashed run left behind")
    c = sub.add_parser("cli", help="start the testbed and open the interactive CLI")
    c.add_argument("--mode", default="chain", help=f"LB mode: {', '.join(MODES)}")
    c.add_argument("--ct-timeouts", default="", help=ct_help)
    c.add_argument("--variant", choices=VARIANTS, help=variant_help)
    c.add_argument("--fastpath", choices=FASTPATHS, help=fastpath_help)
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the testbed's sizes: key=value, repeatable; keys: "
                        + ", ".join(k for k in KEYS if k not in ("flows", "rate")))
    m = sub.add_parser("matrix", help="run every scenario in every mode, then compare")
    m.add_argument("--out", default=None)
    m.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every scenario's times (0.1..10; 0.5 halves the matrix's run time)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    cmp_ = sub.add_parser("compare", help="compare runs: table and plots")
    cmp_.add_argument("runs", nargs="+", help="run folders (or folders holding runs)")
    cmp_.add_argument("--out", required=True)
    args = p.parse_args(argv)

    if args.cmd == "list":
        from scenarios.files import BUILTIN
        for s in registry.SCENARIOS.values():
            print(f"{s.name:30s} {s.description}")
        print(f"\n(files in {BUILTIN}; run your own with --file PATH, make scenario FILE=PATH)")
        print(f"\nmodes: {', '.join(MODES)} (default chain)")
        return 0
    if args.cmd == "compare":
        from scenarios.compare import compare
        compare(args.runs, args.out)
        return 0
    try:
        timeouts = parse_timeouts(getattr(args, "ct_timeouts", ""))
        modes = parse_modes(getattr(args, "mode", "chain"))
        if args.cmd == "cli" and len(modes) > 1:
            raise ParamError("the CLI runs one mode; give one of: " + ", ".join(MODES))
        overrides = parse_set(getattr(args, "set", []))
        for flag in ("variant", "fastpath"):
            value = getattr(args, flag, None)
            if value:
                if overrides.get(flag, value) != value:
                    raise ParamError(f"--{flag} {value} and --set {flag}="
                                     f"{overrides[flag]} disagree: give one")
                overrides[flag] = value
        seeds = [1]
        grid = [overrides]
        if args.cmd == "sweep":
            param = args.param.strip().lower()
            if param not in KEYS:
                raise ParamError(f"unknown parameter {args.param!r} to sweep; valid: "
                                 f"{', '.join(KEYS)}")
            values = [v.strip() for v in args.values.split(",") if v.strip()]
            if not values:
                raise ParamError("--values needs at least one value, e.g. --values 1,2,3")
            if param in overrides:
                raise ParamError(f"{param} is swept: do not --set it too")
            grid = [{**overrides, param: v} for v in values]
            seeds = parse_seeds(args.seeds)
        if args.cmd in ("run", "sweep"):
            if getattr(args, "seed", None) is not None and args.seeds is not None:
                raise ParamError("give --seed or --seeds, not both")
            if args.cmd == "run":
                seeds = (parse_seeds(args.seeds) if args.seeds is not None
                         else [args.seed if args.seed is not None else 1])
            if args.file and args.name:
                raise ParamError("give a scenario name or --file, not both")
            if args.file:
                from scenarios.files import load
                names = [load(args.file)]
            elif args.name:
                names = list(registry.SCENARIOS) if args.name == "all" else [args.name]
            else:
                raise ParamError("give a scenario name (python -m scenarios list) or --file PATH")
        else:
            names = list(registry.SCENARIOS) if args.cmd == "matrix" else []
        for n in names:
            for o in grid:
                sized, p = apply(registry.get(n) if isinstance(n, str) else n, o)
                sized = sized.scaled(args.time_scale)
                if sized.arrivals:            # too many connections for the client ports?
                    from scenarios.arrivals import plan_arrivals
                    from topo.testbed import hosts_of
                    for s in (seeds or [1]):
                        try:
                            plan_arrivals(sized.arrivals, hosts_of(p, "client"),
                                          hosts_of(p, "server"), s)
                        except ValueError as e:
                            raise ParamError(f"scenario {sized.name}: {e}") from None
        if args.cmd == "cli":
            topology(overrides)
    except ValueError as e:           # ParamError included: a user's mistake, never a traceback
        sys.exit(f"error: {e}")
    _need_root(f"`{args.cmd}`")

    import signal
    from scenarios.testbed import TestbedFailure, cleanup_leftovers, Lock, say, stop_on_signals
    # SIGTERM and SIGHUP stop a run as Ctrl-C does (the CLI keeps Ctrl-C for its commands)
    stop_on_signals((signal.SIGTERM, signal.SIGHUP) if args.cmd == "cli" else
                    (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    try:
        if args.cmd == "cleanup":
            with Lock():
                done = cleanup_leftovers()
            say("nothing left behind" if not done else "cleaned")
        elif args.cmd == "run":
            return _run_all(names, modes, seeds, args, timeouts, [overrides])
        elif args.cmd == "sweep":
            return _run_all(names, modes, seeds, args, timeouts, grid, sweep=param)
        elif args.cmd == "cli":
            from scenarios.cli import interactive
            interactive(modes[0], timeouts, topology(overrides))
        elif args.cmd == "matrix":
            from scenarios.run import matrix, run_scenario
            matrix(args.out, runner=lambda name, mode: run_scenario(
                name, mode, time_scale=args.time_scale, overrides=overrides))
    except TestbedFailure as e:
        say(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        how = f" ({e})" if str(e) else ""
        say(f"interrupted{how}: everything this run started was stopped", file=sys.stderr)
        return 130
    return 0


def _run_all(names, modes, seeds, args, timeouts, grid, sweep=None) -> int:
    """Every scenario x parameters (``grid``) x mode x seed; with more than one run, a set
    folder with their statistics (``scenarios.sets``). A failed run is listed (status in its
    summary.csv) and the others go on; Ctrl-C stops the set, and what ran is still written."""
    from scenarios.results import RESULTS
    from scenarios.run import run_scenario
    from scenarios.sets import format_table, write_set
    from scenarios.testbed import TestbedFailure, say
    done, failed, interrupted = [], 0, None
    plan = [(n, o, m, s) for n in names for o in grid for m in modes for s in seeds]
    for n, overrides, mode, seed in plan:
        try:
            done.append(run_scenario(n, mode, seed, cli=getattr(args, "cli", False),
                                     time_scale=args.time_scale, timeouts=timeouts,
                                     overrides=overrides))
        except TestbedFailure as e:
            failed += 1
            say(f"error: {e}", file=sys.stderr)
            if getattr(e, "run_dir", None) is not None:
                done.append(e.run_dir)
            if len(plan) == 1:
                return 1
        except KeyboardInterrupt as e:
            interrupted = e
            if getattr(e, "run_dir", None) is not None:
                done.append(e.run_dir)
            break
    if len(plan) > 1 and done:
        out = write_set(done, RESULTS, sweep=sweep)
        import pandas as pd
        say(f"\nset of {len(done)} run(s): {out}  (runs.txt, runs.csv, comparison.csv)")
        say(format_table(pd.read_csv(out / "comparison.csv", dtype={sweep: str} if sweep
                                       else None), sweep))
    if interrupted is not None:
        raise interrupted
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
