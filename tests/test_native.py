"""The first packet's compiled helpers (agents/native.c, ``agents.native``) against the
Python they replace (``agents.steering``, ``View._steered_chain_py``, hashlib's BLAKE2b): the
same hash, the same chains, the same MACs, and None for whatever they leave to Python. ``make setup`` builds them."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import messages as m
from agents import wire
from agents.chain import View
from agents.keys import flow_key
from agents.native import native, status
from agents.steering import flow_hash
from test_wire_fast import SAMPLES, hot_frames, mutate, mutations, secrets, shape

built = pytest.mark.skipif(native is None, reason=f"agents/native.c: {status}")

members = st.lists(st.sampled_from([f"lb{i}" for i in range(1, 17)]), min_size=1, max_size=12,
                   unique=True)
ipv4_keys = st.builds(lambda proto, a, b, p, q: flow_key(a, b, proto, p, q),
                      st.sampled_from([1, 6, 17, 47, 132]),
                      st.ip_addresses(v=4).map(str), st.ip_addresses(v=4).map(str),
                      st.integers(0, 65535), st.integers(0, 65535))


@built
@settings(max_examples=400)
@given(key=st.one_of(ipv4_keys, st.binary(max_size=40)))
def test_the_flow_hash_is_ovs_hash_as_steering_computes_it(key):
    assert native.flow_hash(key) == flow_hash(key)


@built
@settings(max_examples=300)
@given(names=members, chain_len=st.integers(1, 14), key=ipv4_keys, data=st.data())
def test_steered_chains_are_the_python_ranking(names, chain_len, key, data):
    slots = data.draw(st.permutations(names + [""] * data.draw(st.integers(0, 3))))
    for steering in (tuple(slots), ()):          # by the gateway's slots, and by name
        v = View(1, tuple(names), chain_len, steering)
        assert v.chain(key) == v._steered_chain_py(key)
        assert len(v.chain(key)) == min(chain_len, len(names))


@built
@settings(max_examples=300)
@given(key=st.binary(min_size=1, max_size=64), data=st.one_of(
    st.binary(max_size=600), st.sampled_from([b"", bytes(127), bytes(128), bytes(129),
                                             bytes(256), bytes(257)])))
def test_the_mac_is_keyed_blake2b_256(key, data):
    assert native.mac(key, data) == hashlib.blake2b(data, key=key, digest_size=32).digest()


@built
def test_the_mac_leaves_other_arguments_to_python():
    assert native.mac(b"", b"data") is None and native.mac(bytes(65), b"data") is None
    assert native.mac(bytearray(b"k"), b"data") is None and native.mac(b"k", "data") is None
    with pytest.raises(TypeError):
        native.mac(b"k")
    # the wire's MAC is the compiled one where it can be, Python's where it cannot
    assert wire._sign(b"k" * 64, b"x") == native.mac(b"k" * 64, b"x")
    assert wire._sign(b"k" * 65, b"x") == native.mac(wire.mac_key(b"k" * 65), b"x")


@built
def test_what_it_does_not_take_is_left_to_python():
    v = View(1, ("lb1", "lb2", "lb3"), 2, ("lb1", "lb2", "lb3"))
    seeds, ties, names = v._seeds
    ipv6 = flow_key("2001:db8::1", "2001:db8::2", 6, 1, 2)
    assert native.steered_chain(ipv6, seeds, ties, names, 2) is None
    assert native.steered_chain(bytearray(13), seeds, ties, names, 2) is None
    assert native.steered_chain(bytes(13), list(seeds), ties, names, 2) is None
    assert native.steered_chain(bytes(13), seeds, ties[:2], names, 2) is None
    assert native.steered_chain(bytes(13), (2**40,) + seeds[1:], ties, names, 2) is None
    assert native.steered_chain(bytes(13), seeds, ties, names, 0) == ()
    assert v.chain(ipv6) == v._steered_chain_py(ipv6) and len(v.chain(ipv6)) == 2
    with pytest.raises(TypeError):
        native.steered_chain(bytes(13), seeds)


@built
@settings(max_examples=400)
@given(msg=hot_frames, secret=secrets)
def test_the_frame_codec_is_the_python_one(msg, secret):
    key = wire.mac_key(secret)
    payload = native.frame_encode(msg, key)
    assert payload is not None and payload == wire._encode_fast_py(msg, secret)
    got = native.frame_decode(payload, key)
    assert shape(got) == shape(wire._decode_fast_py(payload, secret)) == shape(msg)


def python_decode(data, secret):
    try:
        return shape(wire._decode_fast_py(data, secret))
    except wire.WireError:
        return False


@built
@settings(max_examples=1500)
@given(hot_frames, secrets, st.lists(mutations, min_size=1, max_size=3), st.booleans())
def test_the_frame_decoder_takes_what_python_takes(msg, secret, edits, resign):
    """Corrupted payloads (the MAC wrong) and authentic malformed ones: the compiled decoder
    gives Python's Frame, says False where Python says the MAC is wrong, or leaves it (None)."""
    key = wire.mac_key(secret)
    data = wire._encode_fast_py(msg, secret)
    target = data[:2] + data[wire._HDR_LEN:] if resign else data
    for op, pos, byte in edits:
        target = mutate(target, op, pos, byte)
    if resign:
        target = target[:2] + native.mac(key, target) + target[2:]
    got = native.frame_decode(target, key)
    if got is not None:
        assert (got if got is False else shape(got)) == python_decode(target, secret)


@built
def test_the_frame_codec_leaves_other_arguments_to_python():
    msg, key = SAMPLES[0], wire.mac_key(b"k")
    data = native.frame_encode(msg, key)
    assert native.frame_encode(msg, b"") is None and native.frame_encode(msg, bytes(65)) is None
    assert native.frame_encode(m.Heartbeat("lb1", 1, 1), key) is None
    assert native.frame_encode(m.Frame("lb1", 1, 1, 1, 1, 1, m.Query(b"k", "nf1")), key) is None
    assert native.frame_decode(bytearray(data), key) is None and native.frame_decode(data, b"") is None
    assert native.frame_decode(data[:-1], key) is False               # the MAC covers every byte
    assert native.frame_decode(data, wire.mac_key(b"j")) is False
    with pytest.raises(TypeError):
        native.frame_decode(data)


@built
@pytest.mark.parametrize("msg", SAMPLES, ids=lambda f: type(f.body).__name__)
def test_the_wire_codes_hot_frames_compiled(msg, monkeypatch):
    data = wire.encode(msg, b"k")

    def python(*args):
        raise AssertionError("Python fast path taken")
    monkeypatch.setattr(wire, "_encode_fast_py", python)
    monkeypatch.setattr(wire, "_decode_fast_py", python)
    assert wire.encode(msg, b"k") == data and wire.decode(data, b"k") == msg


def test_it_is_built_where_setup_ran():
    """The agents run the compiled helpers (a missing or stale build would fall back
    silently)."""
    assert native is not None, f"agents/native.c: {status}: run make setup"
    assert wire._codec is native, "the build predates the frame codec: run make setup"
