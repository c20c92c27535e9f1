"""Command line: python -m scenarios {run,list,cli,matrix,compare,cleanup} ...

Run by the Makefile (``sudo make scenario NAME=scale-out MODE=chain``).
"""
from __future__ import annotations

import argparse
import os
import sys

from agents.conntrack import CtTimeouts, parse_timeouts
from agents.modes import MODES
from scenarios import registry


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
    r.add_argument("name", help=f"one of: {', '.join(registry.SCENARIOS)}, all")
    r.add_argument("--mode", default="chain", help=f"LB mode: {', '.join(MODES)}")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--cli", action="store_true", help="open the Mininet CLI at the end or on failure")
    r.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every time and duration (0.1..10; e.g. 0.5 for a quick run)")
    ct_help = ("conntrack timeouts of the NFs, and of the LB nodes' connection tracking with "
               "them: name=seconds,... (names: " + ", ".join(CtTimeouts().asdict())
               + "; default: the kernel's)")
    r.add_argument("--ct-timeouts", default="", help=ct_help)
    sub.add_parser("list", help="list scenarios and modes")
    sub.add_parser("cleanup", help="remove what a crashed run left behind")
    c = sub.add_parser("cli", help="start the testbed and open the interactive CLI")
    c.add_argument("--mode", default="chain", help=f"LB mode: {', '.join(MODES)}")
    c.add_argument("--ct-timeouts", default="", help=ct_help)
    m = sub.add_parser("matrix", help="run every scenario in every mode, then compare")
    m.add_argument("--out", default=None)
    m.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every scenario's times (0.1..10; 0.5 halves the matrix's run time)")
    cmp_ = sub.add_parser("compare", help="compare runs: table and plots")
    cmp_.add_argument("runs", nargs="+", help="run folders (or folders holding runs)")
    cmp_.add_argument("--out", required=True)
    args = p.parse_args(argv)

    if args.cmd == "list":
        for s in registry.SCENARIOS.values():
            print(f"{s.name:30s} {s.description}")
        print(f"\nmodes: {', '.join(MODES)} (default chain)")
        return 0
    if args.cmd == "compare":
        from scenarios.compare import compare
        compare(args.runs, args.out)
        return 0
    if getattr(args, "mode", "chain") not in MODES:
        sys.exit(f"error: unknown mode {args.mode!r}; valid modes: {', '.join(MODES)}")
    try:
        timeouts = parse_timeouts(getattr(args, "ct_timeouts", ""))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.cmd == "run":
        names = list(registry.SCENARIOS) if args.name == "all" else [args.name]
        for n in names:
            try:
                registry.get(n).scaled(args.time_scale)
            except ValueError as e:
                sys.exit(f"error: {e}")
    _need_root(f"`{args.cmd}`")

    from scenarios.testbed import TestbedFailure, cleanup_leftovers, Lock
    try:
        if args.cmd == "cleanup":
            with Lock():
                done = cleanup_leftovers()
            print("nothing left behind" if not done else "cleaned")
        elif args.cmd == "run":
            from scenarios.run import run_scenario
            for n in names:
                run_scenario(n, args.mode, args.seed, cli=args.cli, time_scale=args.time_scale,
                             timeouts=timeouts)
        elif args.cmd == "cli":
            from scenarios.cli import interactive
            interactive(args.mode, timeouts)
        elif args.cmd == "matrix":
            from scenarios.compare import matrix
            from scenarios.run import run_scenario
            matrix(args.out, runner=lambda name, mode: run_scenario(
                name, mode, time_scale=args.time_scale))
    except TestbedFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: everything this run started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
