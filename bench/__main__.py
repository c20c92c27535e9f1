"""The testbed benchmarks: ``sudo make bench`` (``python -m bench``).

Writes ``results/bench/<run-id>/bench.csv`` (columns metric, value, unit, baseline,
baseline_value, ratio) and ``meta.json`` (machine, plan, failures), points
``results/bench/latest`` at the run and prints a table. Needs root (Mininet).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from agents.native import status as native_status
from bench import REPO, format_table, new_run_dir, point_latest, write_csv

CSV_NAME = "bench.csv"


def machine() -> dict:
    """nproc, CPU model, kernel, memory: which machine produced the figures."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
        mem_gib = round(mem / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        mem_gib = None
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "mem_gib": mem_gib, "python": platform.python_version(), "git_commit": git or "?"}


def parse_groups(text: str | None, valid) -> list[str]:
    """'chain,datapath' -> those groups in the benchmark's order; ValueError names bad ones."""
    if not text:
        return list(valid)
    asked = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in asked if g not in valid]
    if bad or not asked:
        raise ValueError(f"unknown group(s) {', '.join(bad) or repr(text)}; valid: {', '.join(valid)}")
    return [g for g in valid if g in asked]


def save(run_dir: Path, rows, meta: dict) -> Path:
    """Write bench.csv and meta.json into run_dir and point ``latest`` at it; the CSV path."""
    path = write_csv(Path(run_dir) / CSV_NAME, rows)
    (Path(run_dir) / "meta.json").write_text(json.dumps(meta, indent=1))
    point_latest(run_dir)
    return path


def main(argv: list[str] | None = None) -> int:
    from bench import testbed_bench as tbb
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench",
                   help="results root (default: %(default)s)")
    p.add_argument("--run-id", help="run folder name (default: a timestamp)")
    p.add_argument("--only", help=f"comma-separated groups (default all: {','.join(tbb.GROUPS)})")
    p.add_argument("--quick", action="store_true", help="smoke-sized plan (minutes, not figures)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the LB agents during the datapath and entries runs "
                        "(profiles/ in the run folder; needs py-spy: .venv/bin/pip install py-spy)")
    args = p.parse_args(argv)
    try:
        groups = parse_groups(args.only, tbb.GROUPS)
    except ValueError as e:
        p.error(str(e))
    if sys.platform != "linux":
        print("error: the testbed benchmark needs Linux (Mininet, Open vSwitch)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: the testbed benchmark needs root (Mininet): run `sudo make bench`",
              file=sys.stderr)
        return 2
    plan = tbb.QUICK if args.quick else tbb.Plan()
    if args.profile:
        if tbb.py_spy() is None:
            print("error: --profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
            return 2
        plan = tbb.with_plan(plan, profile=True)
    try:
        run_dir = new_run_dir(args.out, args.run_id)
    except (OSError, ValueError) as e:
        print(f"error: cannot create a run folder under {args.out}: {e}", file=sys.stderr)
        return 1
    started = time.monotonic()
    info = machine()
    print(f"== bench: {', '.join(groups)}{' (quick plan)' if args.quick else ''}")
    print(f"   results: {run_dir}")
    print(f"   machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}")
    print(f"   first-packet helpers (agents/native.c): {native_status}")
    res = tbb.run_all(groups, run_dir, plan, print)
    elapsed = time.monotonic() - started
    path = save(run_dir, res.rows, {
        "machine": info, "native": native_status, "groups": groups, "plan": plan.asdict(),
        "elapsed_s": round(elapsed, 1), "failures": res.failures,
        "command": "python -m bench --quick" if args.quick else "sudo make bench"})
    print()
    print(format_table(res.rows))
    lines = tbb.target_lines(res.rows)
    if lines:
        print("\ntargets:")
        print("\n".join(f"  {line}" for line in lines))
    for f in res.failures:
        print(f"FAILED {f}", file=sys.stderr)
    print(f"\nwrote {path} ({elapsed / 60:.1f} min; {info['nproc']} CPUs, {info['cpu']}, "
          f"kernel {info['kernel']})")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
