"""Where results go: ``results/<scenario>/<run-id>/`` per run (``new_run_dir``; ``results/latest``
points at the newest), the versions a run records, and ``results/sets/`` (``scenarios.sets``).
"""
from __future__ import annotations

import platform
import subprocess
from datetime import datetime
from pathlib import Path

from scenarios.testbed import ROOT

RESULTS = ROOT / "results"


def versions() -> dict:
    """The versions of what a run used (params.json ``versions``)."""
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"
    import os_ken
    import pandas
    import scapy
    return {"python": platform.python_version(), "os_ken": getattr(os_ken, "__version__", "?"),
            "scapy": scapy.VERSION, "pandas": pandas.__version__,
            "ovs": out(["ovs-vsctl", "--version"]), "iperf3": out(["iperf3", "--version"]),
            "kernel": platform.release(),
            "git_commit": out(["git", "-C", str(ROOT), "rev-parse", "HEAD"])}


def new_run_dir(scenario: str, mode: str) -> tuple[str, Path]:
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{mode}"
    path = RESULTS / scenario / run_id
    path.mkdir(parents=True, exist_ok=False)
    latest = RESULTS / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(path.relative_to(RESULTS))
    return run_id, path
