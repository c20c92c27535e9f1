"""Result writing of the benchmarks (bench) and the engine benchmark's plumbing (bench.engine).

Timings are not asserted: only what gets written and printed.
"""
import csv
import os

import pytest

from bench import COLUMNS, Row, fmt_num, format_table, new_run_dir, point_latest, read_csv, write_csv
from bench import engine

ROWS = [
    Row("cached_lookups_per_s", 1146488.25, "lookups/s", "dict.get", 16215700.0),
    Row("frames_per_insert", 11.39, "frames", "one frame with key+nf", 1),
    Row("memory_per_entry_bytes", 399.6, "bytes", "dict {key: nf}", 75.5),
    Row("no_baseline", 3.0, "s"),
    Row("zero_baseline", 2.5, "x", "nothing", 0.0),
]


def test_ratio():
    assert ROWS[1].ratio == pytest.approx(11.39)
    assert ROWS[2].ratio == pytest.approx(399.6 / 75.5)
    assert ROWS[3].ratio is None and ROWS[4].ratio is None


@pytest.mark.parametrize("x, text", [
    (None, ""), (0, "0"), (3.0, "3"), (16, "16"), (1146488.25, "1146488"), (1207.4, "1207"),
    (11.394, "11.39"), (0.0007691234, "0.0007691"), (-2.5, "-2.5"), (float("inf"), "inf"),
])
def test_fmt_num(x, text):
    assert fmt_num(x) == text


def test_csv_columns_and_round_trip(tmp_path):
    path = write_csv(tmp_path / "engine.csv", ROWS)
    with path.open() as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == COLUMNS == ("metric", "value", "unit", "baseline", "baseline_value", "ratio")
    assert lines[1] == ["cached_lookups_per_s", "1146488", "lookups/s", "dict.get", "16215700", "0.0707"]
    assert lines[4] == ["no_baseline", "3", "s", "", "", ""]
    assert lines[5] == ["zero_baseline", "2.5", "x", "nothing", "0", ""]
    back = read_csv(path)
    assert [r.metric for r in back] == [r.metric for r in ROWS]
    assert back[2].value == pytest.approx(399.6) and back[2].baseline_value == pytest.approx(75.5)
    assert back[3].baseline_value is None


def test_read_csv_refuses_other_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("metric,value\nx,1\n")
    with pytest.raises(ValueError, match="columns"):
        read_csv(path)


def test_table_is_aligned_and_complete():
    text = format_table(ROWS)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value", "unit", "baseline", "baseline", "value", "ratio"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(ROWS)
    # numbers are right-aligned: the value column ends at the same place on every row
    end = lines[0].index("value") + len("value")
    for line in lines[2:]:
        assert line[end - 1] != " " and line[end] == " "
    assert "1146488" in lines[2] and "0.0707" in lines[2]
    assert lines[5].split()[-3:] == ["-", "-", "-"]


def test_run_dirs_are_fresh_and_latest_follows(tmp_path):
    a = new_run_dir(tmp_path, "run1")
    b = new_run_dir(tmp_path, "run1")
    assert a.name == "run1" and b.name == "run1-2" and a.is_dir() and b.is_dir()
    link = point_latest(a)
    assert link == tmp_path / "latest" and os.readlink(link) == "run1"
    point_latest(b)
    assert os.readlink(link) == "run1-2" and link.resolve() == b.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run1", "run1-2"]
    assert new_run_dir(tmp_path).parent == tmp_path  # timestamp by default


@pytest.mark.parametrize("bad", ["a/b", "latest", "..", "."])
def test_bad_run_ids(tmp_path, bad):
    with pytest.raises(ValueError, match="run id"):
        new_run_dir(tmp_path, bad)


def test_engine_cluster_replicates_every_insert():
    keys = engine.make_keys(30)
    assert len(set(keys)) == 30 and {len(k) for k in keys} == {13}
    cluster = engine.Cluster(secret=engine.SECRET)
    for i, k in enumerate(keys):
        cluster.insert(engine.MEMBERS[i % 3], k)
    cluster.check(keys)
    assert cluster.frames > cluster.data_frames > 0 and cluster.bytes > 0


def test_the_first_packet_takes_the_chain_and_every_node_learns_the_decision():
    fp = engine.FirstPacket()
    for _ in range(3):
        times = fp.connection()
        assert set(times) == set(engine.FirstPacket.STAGES) and min(times.values()) > 0
    # the three connections are decided, committed on every replica, cached at their heads
    for m, dp in fp.dps.items():
        assert len(dp.node.replica()) == 3, m
        assert not dp.buffered and dp.node.synced, m
    assert sum(len(dp.node.cache) for dp in fp.dps.values()) >= 3


def test_engine_main_writes_csv_and_prints_table(tmp_path, capsys):
    assert engine.main(["--out", str(tmp_path), "--run-id", "t", "--scale", "0.001", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "latest" / engine.CSV_NAME)
    metrics = [r.metric for r in rows]
    assert metrics == ["cached_lookups_per_s", "committed_inserts_per_s", "frames_per_insert",
                       "data_frames_per_insert", "bytes_per_insert", "memory_per_entry_bytes",
                       *(f"first_packet_cold_us_{s}" for s in engine.FirstPacket.STAGES),
                       "frame_mac_cold_us", "chain_rank_cold_us", "chain_frame_codec_cold_us"]
    assert all(r.value > 0 and r.baseline_value and r.baseline for r in rows)
    for m in metrics:
        assert m in out
    assert str(tmp_path / "t" / engine.CSV_NAME) in out


def test_engine_main_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        engine.main(["--out", str(tmp_path), "--scale", "0"])
    assert "--scale" in capsys.readouterr().err


def test_engine_main_reports_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert engine.main(["--out", str(blocker), "--scale", "0.001", "--repeat", "1"]) == 1
    assert "cannot write results" in capsys.readouterr().err
