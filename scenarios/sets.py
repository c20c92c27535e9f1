"""Sets of runs: the runs of one command (several seeds or modes) and their statistics.

``write_set(run_dirs)`` writes ``results/sets/<set-id>/``: ``runs.txt`` (one run folder per
line), ``runs.csv`` (one row per run: its summary, seed, time scale and parameters) and
``comparison.csv`` (``aggregate``), and points ``results/latest-set`` at it.

``aggregate`` groups runs by scenario, mode and parameters (testbed sizes, overrides, time
scale: runs of different parameters are never averaged together) and gives ``n_runs`` and,
per metric, ``<metric>_mean``, ``_std``, ``_ci95_lo``, ``_ci95_hi`` (Student's t over the
runs, scipy). Runs whose ``status`` is not ``complete`` are left out, and counted in
``n_excluded``.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Sequence

import pandas as pd
from scipy import stats

from scenarios.compare import _plt
from scenarios.report import STATUS_OK, STATUS_OK_BEFORE

METRICS = ("moved", "moved_unexpected", "broken", "pcc_pct", "completed_pct",
           "throughput_bps_mean", "dip_depth_pct", "dip_s", "nf_detect_s", "controller_restore_s")
GROUP = ("scenario", "mode", "params")


def run_row(run_dir: Path) -> dict:
    """One run: its summary row, seed, time scale and parameters (a canonical JSON text)."""
    summary = pd.read_csv(run_dir / "summary.csv").iloc[0].to_dict()
    params = json.loads((run_dir / "params.json").read_text())
    key = {"testbed": params.get("testbed", {}), "overrides": params.get("overrides", {}),
           "time_scale": params.get("time_scale", 1.0)}
    status = summary.get("status")
    if pd.isna(status) or status in STATUS_OK_BEFORE:
        status = STATUS_OK
    return {**summary, "status": status,
            "seed": params.get("seed"), "time_scale": key["time_scale"],
            "params": json.dumps(key, sort_keys=True), "run_dir": str(run_dir)}


def ci95(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the 95 % Student-t interval of the mean (NaN
    bounds for fewer than two values; zero width when they are all equal)."""
    s = pd.Series(list(values), dtype="float64").dropna()
    n = len(s)
    if n == 0:
        return (float("nan"),) * 4
    mean = float(s.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), float("nan")
    std = float(s.std(ddof=1))
    if std == 0:
        return mean, 0.0, mean, mean
    lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=std / n ** 0.5)
    return mean, std, float(lo), float(hi)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario, mode, params): n_runs, n_excluded, and each metric's mean, std
    and 95 % confidence interval over the runs with status complete."""
    rows = []
    for (scenario, mode, params), g in runs.groupby(list(GROUP), sort=False):
        ok = g[g["status"] == STATUS_OK]
        row = {"scenario": scenario, "mode": mode, "n_runs": len(ok),
               "n_excluded": len(g) - len(ok), "seeds": ",".join(str(s) for s in ok["seed"]),
               "params": params}
        for m in METRICS:
            mean, std, lo, hi = ci95(pd.to_numeric(ok[m], errors="coerce"))
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci95_lo": lo,
                        f"{m}_ci95_hi": hi})
        rows.append(row)
    cols = ["scenario", "mode", "n_runs", "n_excluded", "seeds"] + [
        f"{m}_{s}" for m in METRICS for s in ("mean", "std", "ci95_lo", "ci95_hi")] + ["params"]
    return pd.DataFrame(rows, columns=cols)


def write_set(run_dirs: Sequence[Path], results: Path, set_id: str | None = None,
              sweep: str | None = None) -> Path:
    """The set folder of these runs (see the module docstring), with ``moved.png`` (moved per
    scenario and mode, 95 % intervals) and, for a sweep of parameter ``sweep``,
    ``sweep.png`` (each metric against the parameter, per mode, with its interval)."""
    set_id = set_id or datetime.now().strftime("%Y%m%d-%H%M%S")
    out = results / "sets" / set_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.txt").write_text("".join(f"{d}\n" for d in run_dirs))
    runs = pd.DataFrame([run_row(Path(d)) for d in run_dirs])
    runs.to_csv(out / "runs.csv", index=False)
    table = aggregate(runs)
    if sweep:
        table.insert(2, sweep, [json.loads(p)["overrides"].get(sweep) for p in table["params"]])
    table.to_csv(out / "comparison.csv", index=False)
    plot_moved(table, out / "moved.png")
    if sweep:
        plot_sweep(table, sweep, out / "sweep.png")
    latest = results / "latest-set"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.relative_to(results))
    return out


def format_table(table: pd.DataFrame, sweep: str | None = None) -> str:
    """The set's comparison, short: mean [95 % CI] of moved and broken, completed %, and the
    swept parameter's value."""
    def cell(r, m, digits=1):
        mean, lo, hi = r[f"{m}_mean"], r[f"{m}_ci95_lo"], r[f"{m}_ci95_hi"]
        if pd.isna(lo):
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    lines = [f"{'scenario':28s} {'mode':7s} " + (f"{sweep:>8s} " if sweep else "")
             + f"{'runs':>4s}  {'moved':>22s}  {'broken':>22s}  {'done %':>8s}"]
    for _, r in table.iterrows():
        lines.append(f"{r['scenario']:28s} {r['mode']:7s} "
                     + (f"{str(r[sweep]):>8s} " if sweep else "") + f"{r['n_runs']:4d}  "
                     f"{cell(r, 'moved'):>22s}  {cell(r, 'broken'):>22s}  "
                     f"{r['completed_pct_mean']:8.1f}")
    return "\n".join(lines)


def _yerr(rows: pd.DataFrame, m: str):
    mean = rows[f"{m}_mean"]
    lo = (mean - rows[f"{m}_ci95_lo"]).fillna(0).clip(lower=0)
    hi = (rows[f"{m}_ci95_hi"] - mean).fillna(0).clip(lower=0)
    return [lo.tolist(), hi.tolist()]


def plot_moved(table: pd.DataFrame, path: Path) -> Path:
    """Bars: connections moved per scenario (groups) and mode, mean over the runs with the
    95 % interval; one group per scenario and parameters."""
    plt = _plt()
    table = table.assign(group=[f"{s}" if i == 0 else f"{s} #{i + 1}" for s, i in zip(
        table["scenario"], table.groupby(["scenario", "mode"]).cumcount())])
    groups = list(dict.fromkeys(table["group"]))
    modes = list(dict.fromkeys(table["mode"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.5))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        rows = table[table["mode"] == mode].set_index("group").reindex(groups)
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, rows["moved_mean"].fillna(0), width, yerr=_yerr(rows, "moved"), capsize=3,
               label=mode)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel("connections moved (mean, 95 % CI)")
    n = ", ".join(sorted({str(v) for v in table["n_runs"]}))
    ax.set_title(f"Connections moved per scenario and LB mode ({n} run(s) each)")
    ax.legend(title="mode")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(table: pd.DataFrame, param: str, path: Path) -> Path:
    """Each metric against the swept parameter, one line per mode, 95 % intervals."""
    plt = _plt()
    metrics = ("moved", "broken", "completed_pct", "throughput_bps_mean")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8))
    x = pd.to_numeric(table[param], errors="coerce")
    numeric = x.notna().all()
    for ax, m in zip(axes, metrics):
        for mode in dict.fromkeys(table["mode"]):
            rows = table[table["mode"] == mode].assign(_x=x if numeric else table[param])
            rows = rows.sort_values("_x")
            ax.errorbar(rows["_x"].astype(float if numeric else str), rows[f"{m}_mean"],
                        yerr=_yerr(rows, m), marker="o", capsize=3, label=mode)
        ax.set_xlabel(param)
        ax.set_title(m)
    axes[0].legend(title="mode")
    fig.suptitle(f"{table['scenario'].iloc[0]}: metrics against {param} (mean, 95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
