"""Benchmarks: result rows, run folders and the printed table shared by every benchmark.

A run writes ``results/<bench>/<run-id>/<name>.csv`` with the columns of ``COLUMNS`` and
points ``results/<bench>/latest`` at its folder.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["COLUMNS", "Row", "REPO", "new_run_dir", "point_latest", "write_csv", "read_csv",
           "format_table", "fmt_num"]

COLUMNS = ("metric", "value", "unit", "baseline", "baseline_value", "ratio")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    """One measured figure, next to the baseline measured in the same run (if any)."""
    metric: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None

    @property
    def ratio(self) -> float | None:
        """value / baseline_value, or None without a (non-zero) baseline."""
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return self.value / self.baseline_value


def fmt_num(x: float | None) -> str:
    """Compact, exact enough number text for CSV cells and tables ('' for None)."""
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.4g}"


def new_run_dir(root: Path, run_id: str | None = None) -> Path:
    """Create and return a fresh ``root/<run-id>`` (a timestamp by default, made unique)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = run_id or time.strftime("%Y%m%d-%H%M%S")
    if "/" in base or base in ("", ".", "..", "latest"):
        raise ValueError(f"bad run id {base!r}")
    for n in range(1, 1000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder for {base!r} under {root}")


def point_latest(run_dir: Path) -> Path:
    """Point ``<root>/latest`` (a relative symlink) at ``run_dir``, replacing it atomically."""
    run_dir = Path(run_dir)
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)
    return link


def write_csv(path: Path, rows: Iterable[Row]) -> Path:
    """Write rows with the columns of ``COLUMNS``."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.metric, fmt_num(r.value), r.unit, r.baseline,
                        fmt_num(r.baseline_value), fmt_num(r.ratio)])
    return path


def read_csv(path: Path) -> list[Row]:
    """Rows back from a CSV written by ``write_csv``."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
        return [Row(d["metric"], float(d["value"]), d["unit"], d["baseline"],
                    float(d["baseline_value"]) if d["baseline_value"] else None)
                for d in reader]


def format_table(rows: Sequence[Row]) -> str:
    """A readable, aligned text table of rows."""
    header = ["metric", "value", "unit", "baseline", "baseline value", "ratio"]
    cells = [[r.metric, fmt_num(r.value), r.unit, r.baseline or "-",
              fmt_num(r.baseline_value) or "-", fmt_num(r.ratio) or "-"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    right = {1, 4, 5}

    def line(values):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])
