"""The controller's state file (ryu_apps.store)."""
import os

import pytest

from ryu_apps import store


def test_save_then_load_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    assert store.load(path) is None
    store.save(path, {"epoch": 3, "lbs": ["lb1"]})
    store.save(path, {"epoch": 4, "lbs": ["lb1", "lb2"]})
    assert store.load(path) == {"epoch": 4, "lbs": ["lb1", "lb2"]}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert os.stat(path).st_mode & 0o077 == 0


def test_a_failed_save_keeps_the_old_snapshot_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    store.save(path, {"epoch": 1})

    def crash(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        store.save(path, {"epoch": 2})
    assert store.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("text, message", [("{", "not valid JSON"), ("[1]", "JSON object")])
def test_a_corrupt_file_is_a_store_error(tmp_path, text, message):
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(store.StoreError, match=message):
        store.load(tmp_path / "s.json")
