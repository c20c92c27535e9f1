"""How each LB mode picks NFs (pure logic)."""
import zlib

import pytest

from agents.keys import flow_key
from agents.modes import Picker

KEYS = [flow_key("10.0.1.1", "10.0.2.1", 6, 20000 + i, 5201) for i in range(400)]


def test_hash_mode_is_the_key_modulo_the_active_nfs():
    p = Picker("hash")
    p.set_active(["nf2", "nf1", "nf3"])
    for k in KEYS[:20]:
        assert p.stateless(k) == ("nf1", "nf2", "nf3")[zlib.crc32(k) % 3]


def test_stateless_modes_remap_when_the_pool_grows_and_local_does_not():
    moved = {}
    for mode in ("hash", "maglev", "local"):
        p = Picker(mode)
        p.set_active(["nf1", "nf2", "nf3"])
        before = [p.stateless(k) for k in KEYS]
        p.set_active(["nf1", "nf2", "nf3", "nf4"])
        moved[mode] = sum(a != p.stateless(k) for a, k in zip(before, KEYS))
    assert moved["local"] == 0
    assert moved["maglev"] < moved["hash"]            # Maglev disrupts less than modulo
    assert 0.15 * len(KEYS) < moved["maglev"] < 0.40 * len(KEYS)


def test_local_table_is_per_node_and_forgets_on_delete():
    p = Picker("local")
    p.set_active(["nf1", "nf2"])
    nf = p.stateless(KEYS[0])
    p.set_active(["nf3"])
    assert p.stateless(KEYS[0]) == nf
    p.forget(KEYS[0])
    assert p.stateless(KEYS[0]) == "nf3"


def test_no_active_nf_proposes_nothing_and_bad_mode_is_refused():
    p = Picker("maglev")
    assert p.propose(KEYS[0]) is None
    assert p.set_active(["nf1"]) and not p.set_active(["nf1"])
    with pytest.raises(ValueError, match="valid modes"):
        Picker("random")
