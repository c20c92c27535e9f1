"""Compare runs: one table over run folders, and PNG plots (``make compare``, ``make matrix``).

``compare(runs, out)`` takes run folders (holding ``summary.csv``) or folders searched
recursively for them, and writes into ``out``:

- ``comparison.csv``: one row per run (scenario, mode, run_id, flows, moved, broken,
  pcc_pct, throughput_mbit, completed_pct, run_dir), also printed;
- ``nf_timeline.png``: for one run (the newest chain run, else the newest), each flow's
  data connection from start to end, colored by the NF that carried it, events marked;
- ``moved.png``: connections moved per scenario (groups) and mode (bars);
- ``throughput.png``: total throughput per second over time for the runs of that same
  scenario (newest per mode), from the iperf3 JSON, events marked.

"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from scenarios import report

COLUMNS = ["scenario", "mode", "run_id", "flows", "moved", "broken", "pcc_pct",
           "throughput_mbit", "completed_pct", "run_dir"]
MODE_ORDER = ("chain", "maglev", "local", "hash")


# --- finding and reading runs ------------------------------------------------------------

def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (those holding summary.csv) given or found under the given folders."""
    found: dict[Path, Path] = {}
    missing = []
    for arg in paths:
        p = Path(arg)
        if not p.exists():
            missing.append(str(arg))
            continue
        if p.is_file():
            p = p.parent if p.name == "summary.csv" else p
        candidates = [p] if (p / "summary.csv").is_file() else \
            sorted(s.parent for s in p.rglob("summary.csv"))
        for c in candidates:
            found.setdefault(c.resolve(), c)
    if missing:
        raise SystemExit(f"error: no such folder: {', '.join(missing)}")
    return list(found.values())


def _mode_rank(mode: str) -> int:
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def load_table(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per run (COLUMNS), sorted by scenario, mode, run_id."""
    rows = []
    for d in run_dirs:
        try:
            s = pd.read_csv(d / "summary.csv", keep_default_na=False, na_values={
                "pcc_pct": [""], "throughput_bps_mean": [""], "completed_pct": [""]})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise SystemExit(f"error: unreadable {d / 'summary.csv'}: {e}") from None
        need = {"scenario", "mode", "run_id", "flows", "moved", "broken", "pcc_pct",
                "throughput_bps_mean"}
        if len(s) == 0 or not need <= set(s.columns):
            raise SystemExit(f"error: {d / 'summary.csv'} is not a run summary (needs columns "
                             f"{', '.join(sorted(need))})")
        for r in s.to_dict("records"):
            bps = report._num(r.get("throughput_bps_mean"))
            rows.append({
                "scenario": str(r["scenario"]), "mode": str(r["mode"]),
                "run_id": str(r["run_id"]), "flows": int(r["flows"]), "moved": int(r["moved"]),
                "broken": int(r["broken"]), "pcc_pct": report._num(r["pcc_pct"]),
                "throughput_mbit": None if bps is None else round(bps / 1e6, 3),
                "completed_pct": report._num(r.get("completed_pct")), "run_dir": str(d),
            })
    df = pd.DataFrame(rows, columns=COLUMNS)
    if len(df):
        df["_rank"] = df["mode"].map(_mode_rank)
        df = df.sort_values(["scenario", "_rank", "mode", "run_id"]).drop(columns="_rank")
    return df.reset_index(drop=True)


def pick_run(table: pd.DataFrame) -> pd.Series:
    """The run shown in the timeline: the newest chain run, else the newest run."""
    chain = table[table["mode"] == "chain"]
    pool = chain if len(chain) else table
    return pool.sort_values("run_id").iloc[-1]


def _events(run_dir: Path) -> list[tuple[float, str]]:
    """(time_s, label) of a run's events, from summary.csv."""
    s = pd.read_csv(Path(run_dir) / "summary.csv", keep_default_na=False, dtype=str)
    if not len(s):
        return []
    times = [t for t in str(s["event_times"].iloc[0]).split(";") if t.strip()] \
        if "event_times" in s else []
    labels = [e for e in str(s["events"].iloc[0]).split(";") if e.strip()] \
        if "events" in s else []
    out = []
    for i, t in enumerate(times):
        try:
            label = labels[i].split(" ", 1)[1] if i < len(labels) and " " in labels[i] else ""
            out.append((float(t), label))
        except ValueError:
            continue
    return out


def throughput_series(run_dir: Path) -> pd.Series:
    """Total bits/s per whole second of the run (index: second), summed over flows.

    Each flow's iperf3 intervals are placed at the flow's start_s (flows.csv) plus the
    interval's start; flows without iperf3 JSON are skipped.
    """
    run_dir = Path(run_dir)
    flows = report.read_flows(run_dir / "flows.csv")
    starts = flows.groupby("flow_id", sort=False)["start_s"].first()
    acc: dict[int, float] = {}
    for fid, start in starts.items():
        doc = report.load_iperf_json(run_dir / "logs" / "iperf" / f"{fid}.json")
        for iv in doc.get("intervals") or []:
            s = iv.get("sum") or {}
            bps, t = report._num(s.get("bits_per_second")), report._num(s.get("start"))
            if bps is None or t is None:
                continue
            sec = int(math.floor(float(start) + t))
            acc[sec] = acc.get(sec, 0.0) + bps
    if not acc:
        return pd.Series(dtype="float64")
    idx = range(min(acc), max(acc) + 1)
    return pd.Series([acc.get(i, 0.0) for i in idx], index=list(idx), dtype="float64")


# --- plots -------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mark_events(ax, events, ymax_text: bool = True) -> None:
    for t, label in events:
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
        if ymax_text:
            ax.annotate(label or "event", (t, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, rotation=0)


def plot_timeline(run_dir: Path, path: Path) -> Path:
    """Each flow's data connection as a bar from start to end, colored by its NF."""
    plt = _plt()
    run_dir = Path(run_dir)
    flows = report.read_flows(run_dir / "flows.csv")
    moved = flows.groupby("flow_id")["moved"].any()
    broken = ~flows.groupby("flow_id")["completed"].all()
    data = flows[flows["role"] == "data"].drop_duplicates("flow_id")
    data = data.sort_values(["start_s", "flow_id"]).reset_index(drop=True)
    data["moved"] = data["flow_id"].map(moved).fillna(False).astype(bool)
    data["completed"] = ~data["flow_id"].map(broken).fillna(False).astype(bool)
    nfs = sorted({n for n in data["nf_first"] if n}, key=report.nf_sort_key)
    cmap = plt.get_cmap("tab10")
    colors = {nf: cmap(i % 10) for i, nf in enumerate(nfs)}
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(data) + 1.5)))
    for y, r in data.iterrows():
        end = r["end_s"] if not pd.isna(r["end_s"]) else r["start_s"] + r["duration_s"]
        color = colors.get(r["nf_first"], "lightgrey")
        ax.barh(y, end - r["start_s"], left=r["start_s"], color=color, height=0.7,
                edgecolor="red" if r["moved"] else "none", linewidth=1.5)
        if not r["completed"]:
            ax.plot([end], [y], marker="x", color="red", markersize=8)
    ax.set_yticks(range(len(data)))
    ax.set_yticklabels(data["flow_id"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("flow")
    meta = data.iloc[0] if len(data) else None
    title = f"NF per flow: {meta['scenario']} / {meta['mode']} / {meta['run_id']}" \
        if meta is not None else f"NF per flow: {run_dir.name} (no data connections)"
    ax.set_title(title + "\n(data connection colored by its NF; red edge: a connection of the "
                 "flow moved; x: the flow broke)", fontsize=10)
    _mark_events(ax, _events(run_dir))
    from matplotlib.patches import Patch
    handles = [Patch(color=colors[nf], label=nf) for nf in nfs]
    if (data["nf_first"] == "").any():
        handles.append(Patch(color="lightgrey", label="(no NF saw it)"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  title="NF")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_moved(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: connections moved per scenario (groups) and mode (bars), mean over runs."""
    plt = _plt()
    pivot = table.pivot_table(index="scenario", columns="mode", values="moved", aggfunc="mean")
    pivot = pivot[sorted(pivot.columns, key=lambda m: (_mode_rank(m), m))]
    counts = table.groupby(["scenario", "mode"]).size()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(pivot) + 2), 4.5))
    width = 0.8 / max(1, len(pivot.columns))
    cmap = plt.get_cmap("tab10")
    for i, mode in enumerate(pivot.columns):
        xs = [j + (i - (len(pivot.columns) - 1) / 2) * width for j in range(len(pivot))]
        vals = pivot[mode].tolist()
        bars = ax.bar(xs, [0 if pd.isna(v) else v for v in vals], width, label=mode,
                      color=cmap(_mode_rank(mode) % 10))
        for b, v in zip(bars, vals):
            if not pd.isna(v):
                ax.annotate(f"{v:g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(pivot)))
    ax.set_xticklabels(pivot.index, rotation=20, ha="right")
    ax.set_ylabel("connections moved")
    note = " (mean over runs)" if (counts > 1).any() else ""
    ax.set_title("Connections moved per scenario and LB mode" + note)
    ax.legend(title="mode")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_throughput(table: pd.DataFrame, chosen: pd.Series, path: Path) -> Path:
    """Total throughput over time for the chosen run's scenario, newest run per mode."""
    plt = _plt()
    same = table[table["scenario"] == chosen["scenario"]].sort_values("run_id")
    newest = same.groupby("mode", sort=False).tail(1)
    newest = newest.assign(_r=newest["mode"].map(_mode_rank)).sort_values(["_r", "mode"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    drawn = 0
    for r in newest.itertuples(index=False):
        series = throughput_series(Path(r.run_dir))
        if len(series):
            ax.plot(series.index, series.values / 1e6, marker=".", label=f"{r.mode} ({r.run_id})")
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no iperf3 interval data", ha="center", va="center",
                transform=ax.transAxes)
    _mark_events(ax, _events(Path(chosen["run_dir"])))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("total throughput (Mbit/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput over time: {chosen['scenario']} (events of {chosen['run_id']})")
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run_throughput(run_dir: Path, path: Path) -> Path:
    """One run's total iperf3 throughput per second, its events, and each event's dip
    (summary.csv ``dips``: depth and seconds below 90 % of the running flows' rate)."""
    plt = _plt()
    run_dir = Path(run_dir)
    series = throughput_series(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv", keep_default_na=False, dtype=str).iloc[0]
    dips = [d.split(": ", 1)[1] if ": " in d else "" for d in
            str(summary.get("dips", "")).split(" | ")] if summary.get("dips") else []
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if len(series):
        ax.plot(series.index, series.values / 1e6, marker=".", color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no iperf3 interval data", ha="center", va="center",
                transform=ax.transAxes)
    events = _events(run_dir)
    labelled = [(t, f"{label}\ndip {dips[i]}" if i < len(dips) and dips[i] not in ("", "-")
                 else label) for i, (t, label) in enumerate(events)]
    _mark_events(ax, labelled)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("total throughput (Mbit/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput: {summary['scenario']} / {summary['mode']} / {summary['run_id']}"
                 f" (iperf3 flows, 1 s intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, log=print) -> list[Path]:
    """A run's own plots next to its results: nf_timeline.png and throughput.png. A plot that
    cannot be drawn is reported, not raised: the results are written already."""
    run_dir, out = Path(run_dir), []
    for name, draw in (("nf_timeline.png", plot_timeline), ("throughput.png", plot_run_throughput)):
        try:
            out.append(draw(run_dir, run_dir / name))
        except (OSError, ValueError, KeyError, IndexError) as e:
            log(f"warning: {name} not drawn: {e}")
    return out


# --- entry points ------------------------------------------------------------------------

def compare(runs: list[str], out: str, log=print) -> pd.DataFrame:
    """Write comparison.csv and the plots for the given runs into ``out``; return the table."""
    if not runs:
        raise SystemExit("error: no run folders given (e.g. make compare RUNS=results/ OUT=DIR)")
    run_dirs = find_runs(runs)
    if not run_dirs:
        raise SystemExit(f"error: no runs found in {' '.join(map(str, runs))} "
                         f"(a run folder holds summary.csv; run a scenario first)")
    table = load_table(run_dirs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "comparison.csv", index=False)
    shown = table.drop(columns="run_dir")
    log(shown.to_string(index=False, na_rep="-"))
    chosen = pick_run(table)
    plots = [plot_moved(table, out_dir / "moved.png")]
    chosen_dir = Path(chosen["run_dir"])
    if (chosen_dir / "flows.csv").is_file():
        plots.append(plot_timeline(chosen_dir, out_dir / "nf_timeline.png"))
        plots.append(plot_throughput(table, chosen, out_dir / "throughput.png"))
    else:
        log(f"warning: {chosen_dir} has no flows.csv: no timeline or throughput plot")
    log(f"\nwrote {out_dir / 'comparison.csv'} and {', '.join(p.name for p in plots)} "
        f"into {out_dir}")
    return table


def main(argv=None) -> int:
    """``python -m scenarios.compare RUN... --out DIR`` (same as ``python -m scenarios compare``)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m scenarios.compare")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    compare(args.runs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
