"""Sets of runs (scenarios.sets): grouping by parameters and the CI columns, on fixed CSVs."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy import stats

from scenarios.report import SUMMARY_COLUMNS
from scenarios.sets import METRICS, aggregate, ci95, run_row, write_set


def fake_run(root, name, mode, seed, moved, *, lbs=4, status="ok", time_scale=1.0,
             broken=0, overrides=None):
    d = root / f"{len(list(root.iterdir())):03d}-{name}-{mode}-{seed}"
    d.mkdir()
    row = dict.fromkeys(SUMMARY_COLUMNS, "")
    row.update(scenario=name, mode=mode, run_id=d.name, moved=moved, moved_unexpected=moved,
               broken=broken, pcc_pct=100.0, completed_pct=100.0 - broken,
               throughput_bps_mean=2e6 + seed, status=status)
    pd.DataFrame([row], columns=SUMMARY_COLUMNS).to_csv(d / "summary.csv", index=False)
    (d / "params.json").write_text(json.dumps({
        "seed": seed, "time_scale": time_scale, "testbed": {"lbs": lbs, "nfs": 3},
        "overrides": overrides or {}}))
    return d


def test_ci_is_students_t_over_the_runs():
    values = [4, 7, 5, 9, 6]
    mean, std, lo, hi = ci95(values)
    s = pd.Series(values, dtype=float)
    want = stats.t.interval(0.95, len(values) - 1, loc=s.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(6.2) and std == pytest.approx(s.std(ddof=1))
    assert (lo, hi) == pytest.approx(want)
    assert ci95([3])[0] == 3 and all(math.isnan(x) for x in ci95([3])[1:])
    assert ci95([2, 2, 2]) == (2.0, 0.0, 2.0, 2.0)


def test_runs_of_other_parameters_are_never_averaged_together(tmp_path):
    runs = [fake_run(tmp_path, "scale-out", "maglev", s, m) for s, m in [(1, 5), (2, 7), (3, 6)]]
    runs += [fake_run(tmp_path, "scale-out", "maglev", 1, 50, lbs=6)]
    runs += [fake_run(tmp_path, "scale-out", "maglev", 1, 40, time_scale=0.5)]
    runs += [fake_run(tmp_path, "scale-out", "chain", s, 0) for s in (1, 2, 3)]
    out = write_set(runs, tmp_path / "results", "set1")
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 4
    mag = table[(table["mode"] == "maglev") & (table["n_runs"] == 3)].iloc[0]
    assert mag["moved_mean"] == pytest.approx(6.0) and mag["seeds"] == "1,2,3"
    lo, hi = stats.t.interval(0.95, 2, loc=6.0, scale=stats.sem([5, 7, 6]))
    assert (mag["moved_ci95_lo"], mag["moved_ci95_hi"]) == pytest.approx((lo, hi))
    assert sorted(table[table["mode"] == "maglev"]["n_runs"]) == [1, 1, 3]
    chain = table[table["mode"] == "chain"].iloc[0]
    assert chain["moved_mean"] == 0 and chain["moved_ci95_hi"] == 0
    for m in METRICS:
        for suffix in ("mean", "std", "ci95_lo", "ci95_hi"):
            assert f"{m}_{suffix}" in table.columns
    assert (out / "runs.txt").read_text().splitlines() == [str(r) for r in runs]
    assert len(pd.read_csv(out / "runs.csv")) == len(runs)
    assert (tmp_path / "results" / "latest-set").resolve() == out.resolve()


def test_failed_and_interrupted_runs_are_left_out_and_counted(tmp_path):
    runs = [fake_run(tmp_path, "lb-failure", "chain", 1, 0),
            fake_run(tmp_path, "lb-failure", "chain", 2, 9, status="failed: lb2 exited"),
            fake_run(tmp_path, "lb-failure", "chain", 3, 8, status="interrupted"),
            fake_run(tmp_path, "lb-failure", "chain", 4, 2)]
    table = aggregate(pd.DataFrame([run_row(r)
                                    for r in runs]))
    (row,) = table.itertuples()
    assert row.n_runs == 2 and row.n_excluded == 2 and row.moved_mean == 1.0


def test_a_summary_written_before_status_counts_as_ok(tmp_path):
    d = fake_run(tmp_path, "churn", "hash", 1, 3)
    df = pd.read_csv(d / "summary.csv").drop(columns=["status"])
    df.to_csv(d / "summary.csv", index=False)
    table = aggregate(pd.DataFrame([run_row(d)]))
    assert table.iloc[0]["n_runs"] == 1


def test_a_sweep_has_the_parameter_as_a_column_and_a_plot(tmp_path):
    runs = [fake_run(tmp_path, "scale-out", mode, seed, moved, lbs=4, overrides={"l": l})
            for l, mode, seed, moved in [("1", "maglev", 1, 5), ("1", "maglev", 2, 7),
                                         ("3", "maglev", 1, 4), ("3", "maglev", 2, 4),
                                         ("1", "chain", 1, 0), ("3", "chain", 1, 0)]]
    out = write_set(runs, tmp_path / "results", "sweep1", sweep="l")
    table = pd.read_csv(out / "comparison.csv", dtype={"l": str})
    assert list(table.columns[:3]) == ["scenario", "mode", "l"]
    got = {(r.mode, r.l): (r.n_runs, r.moved_mean) for r in table.itertuples()}
    assert got == {("maglev", "1"): (2, 6.0), ("maglev", "3"): (2, 4.0), ("chain", "1"): (1, 0.0),
                   ("chain", "3"): (1, 0.0)}
    assert (out / "sweep.png").stat().st_size > 1000 and (out / "moved.png").stat().st_size > 1000
