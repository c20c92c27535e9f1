"""Fast paths of agents.wire (hot chain frames: a Write, Answer, Ack or Gone body, or none)
against the generic codecs: the same bytes, the same values, the same refusals. Each test
takes both fast paths: ``_encode_fast``/``_decode_fast`` (compiled where agents.native is
built) and ``_encode_fast_py``/``_decode_fast_py``."""
import copy
import dataclasses
import itertools
import pickle

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agents import messages as m
from agents import wire
from agents.keys import flow_key
from agents.wire import WireError
from test_wire import _mac

SECRET = b"0123456789abcdef0123456789abcdef"
K4 = flow_key("10.0.1.1", "10.0.2.1", 6, 40000, 5201)
K6 = flow_key("2001:db8::1", "2001:db8::2", 17, 53, 5353)
TOP = 2**64 - 1

# --- strategies ------------------------------------------------------------------------------

u64 = st.one_of(st.integers(0, TOP), st.sampled_from([0, 1, 255, 2**63 - 1, TOP]))
keys = st.one_of(st.binary(min_size=13, max_size=13), st.binary(min_size=37, max_size=37),
                 st.binary(max_size=255))
names = st.one_of(st.text(max_size=63),  # at most 252 bytes of UTF-8
                  st.text(st.characters(max_codepoint=127), max_size=255),
                  st.sampled_from(["", "lb1", "nf-ü", "ψ" * 127, "a" * 255]))
packets = st.binary(max_size=255)
secrets = st.binary(min_size=1, max_size=100)  # shorter and longer than SHA-256's 64-byte block

HOT_BODIES = {
    "Write": st.builds(m.Write, keys, u64, names, packets, u64),
    "Answer": st.builds(m.Answer, keys, u64, names, st.booleans(), u64),
    "Ack": st.builds(m.Ack, keys, u64, names),
    "Gone": st.builds(m.Gone, keys, u64),
    "pure ack": st.none(),
}
HOT = {shape: st.builds(m.Frame, names, u64, u64, u64, u64, u64, body)
       for shape, body in HOT_BODIES.items()}
hot_frames = st.one_of(*HOT.values())


def frame(body, **kw):
    args = dict(src="lb1", src_inc=3, dst_inc=2, epoch=7, seq=12, ack=11, body=body)
    args.update(kw)
    return m.Frame(**args)


SAMPLES = [
    frame(m.Write(K4, 672137217, "nf1", bytes(range(60)), 7)),
    frame(m.Write(K6, TOP, "", b"", 0), src="ψ" * 10),
    frame(m.Answer(K4, 5, "nf2", True, 7)),
    frame(m.Answer(K6, 5, "nf-ü", False, TOP)),
    frame(m.Ack(K4, 9, "nf3")),
    frame(m.Ack(K6, 0, "")),
    frame(m.Gone(K4, 10)),
    frame(None, seq=0),
    frame(None, src="", src_inc=TOP, dst_inc=0, epoch=TOP, seq=0, ack=TOP),
]


# --- helpers -------------------------------------------------------------------------------

def shape(value):
    """A value with the exact types of everything in it (== alone takes True for 1)."""
    if dataclasses.is_dataclass(value):
        assert set(vars(value)) == {f.name for f in dataclasses.fields(value)}
        return type(value), tuple((f.name, shape(getattr(value, f.name)))
                                  for f in dataclasses.fields(value))
    return type(value), value


def outcome(fn, *args):
    """What a call gives: the shape of its value, or its error's type and message."""
    try:
        return "value", shape(fn(*args))
    except (WireError, ValueError) as e:
        return type(e).__name__, str(e)


def signed_part(payload: bytes) -> bytes:
    return payload[:2] + payload[wire._HDR_LEN:]


def sign(signed: bytes, secret: bytes = SECRET) -> bytes:
    """A payload with a valid MAC (computed by the test reference, _mac) over arbitrary content."""
    return signed[:2] + _mac(secret, signed) + signed[2:]


def check_decode(data: bytes, secret: bytes = SECRET):
    """decode (fast path first) gives exactly what the generic decoder gives, and the fast
    path alone accepts nothing the generic one refuses."""
    generic = outcome(wire._decode_generic, data, secret)
    assert outcome(wire.decode, data, secret) == generic
    for fast_path in (wire._decode_fast, wire._decode_fast_py):
        fast = outcome(fast_path, data, secret)
        if fast != ("value", shape(None)):  # None: left to the generic path
            assert fast == generic
    return generic


# --- byte-identical encoding, identical values -------------------------------------------

@pytest.mark.parametrize("shape_name", HOT)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), secret=secrets)
def test_fast_matches_generic(shape_name, data, secret):
    msg = data.draw(HOT[shape_name])
    fast = wire._encode_fast(msg, secret)
    assert fast is not None, "a hot frame must take the fast path"
    assert fast == wire._encode_generic(msg, secret) == wire.encode(msg, secret) == \
        wire._encode_fast_py(msg, secret)
    assert fast == sign(signed_part(fast), secret)  # the MAC over the same bytes
    assert wire.frame_bytes(b"\xaa" * 6, b"\xbb" * 6, msg, secret) == \
        b"\xaa" * 6 + b"\xbb" * 6 + b"\x88\xb5" + fast
    got = wire._decode_fast(fast, secret)
    assert got is not None, "a hot frame must take the fast path"
    assert shape(got) == shape(wire._decode_generic(fast, secret)) == shape(wire.decode(fast, secret)) \
        == shape(wire._decode_fast_py(fast, secret))
    assert got == msg and shape(got) == shape(msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda f: type(f.body).__name__)
def test_hot_frames_do_not_touch_the_generic_path(msg, monkeypatch):
    data = wire.encode(msg, SECRET)

    def generic(*args):
        raise AssertionError("generic path taken")
    monkeypatch.setattr(wire, "_encode_generic", generic)
    monkeypatch.setattr(wire, "_decode_generic", generic)
    assert wire.encode(msg, SECRET) == data
    assert wire.decode(data, SECRET) == msg


@pytest.mark.parametrize("msg", [
    frame(m.Query(K4, "nf1")), frame(m.InsertReq(K4, "nf1", 4)), frame(m.DeleteReq(K6, 0)),
    frame(m.Sync((m.SyncEntry(K4, 1, "nf1", True),))), frame(m.SyncDone()),
    m.Heartbeat("lb1", 4, 1000), m.Hello("lb2", 7, 123), m.ViewMsg(1, 3, "chain", (), ()),
], ids=lambda x: type(x.body if isinstance(x, m.Frame) else x).__name__)
def test_other_messages_take_the_generic_path(msg):
    assert wire._encode_fast(msg, SECRET) is None and wire._encode_fast_py(msg, SECRET) is None
    data = wire.encode(msg, SECRET)
    assert data == wire._encode_generic(msg, SECRET)
    assert wire._decode_fast(data, SECRET) is None and wire._decode_fast_py(data, SECRET) is None
    assert wire.decode(data, SECRET) == msg


def test_fast_decoded_objects_are_ordinary_dataclasses():
    """The fast decoders fill instances without __init__: they must behave as built ones."""
    for msg, decode in itertools.product(SAMPLES, (wire._decode_fast, wire._decode_fast_py)):
        got = decode(wire.encode(msg, SECRET), SECRET)
        assert got is not msg and got == msg and hash(got) == hash(msg) and repr(got) == repr(msg)
        assert pickle.loads(pickle.dumps(got)) == msg and copy.deepcopy(got) == msg
        assert dataclasses.replace(got, seq=99) == dataclasses.replace(msg, seq=99)
        assert dataclasses.astuple(got) == dataclasses.astuple(msg)
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.seq = 1
        if got.body is not None:
            with pytest.raises(dataclasses.FrozenInstanceError):
                got.body.key = b""


@settings(max_examples=200)
@given(secret=st.binary(min_size=1, max_size=300), data=st.binary(max_size=400))
def test_sign_is_keyed_blake2b(secret, data):
    assert wire._sign(secret, data) == _mac(secret, data)
    assert wire._sign(secret, data) != _mac(secret + b"x", data)


# --- encoding: what the fast path leaves to the generic one -------------------------------

class Text(str):
    pass


class Blob(bytes):
    pass


class Encodes:
    """Not a str, though it has an encode method (the generic encoder refuses it)."""

    def encode(self, *args):
        return b"lb1"

    def __repr__(self):
        return "Encodes()"


UNUSUAL = [  # each refused by the generic encoder, or encoded by it (str and bytes subclasses)
    frame(m.Write(bytearray(K4), 1, "nf1")), frame(m.Write(memoryview(K4), 1, "nf1")),
    frame(m.Write(Blob(K4), 1, "nf1")), frame(m.Write(K4, 1, "nf1", bytearray(b"p"))),
    frame(m.Write(K4, 1, "nf1", b"p" * 256)), frame(m.Write(K4, 1, "nf1", b"p" * 255)),
    frame(m.Write(b"k" * 256, 1, "nf1")), frame(m.Gone(b"k" * 256, 1)), frame(m.Ack(b"k" * 255, 1, "")),
    frame(m.Ack(K4, 1, "x" * 256)), frame(m.Ack(K4, 1, "é" * 128)), frame(m.Ack(K4, 1, "é" * 127)),
    frame(m.Ack(K4, 1, "\ud800")), frame(m.Ack(K4, 1, b"nf1")), frame(m.Ack(K4, 1, Text("nf1"))),
    frame(m.Ack(K4, 1, None)), frame(m.Gone("key", 1)), frame(m.Gone(None, 1)),
    frame(m.Answer(K4, 1, "nf1", 1)), frame(m.Answer(K4, 1, "nf1", 0)),
    frame(m.Answer(K4, 1, "nf1", None)), frame(m.Answer(K4, 1, "nf1", True, -1)),
    frame(m.Write(K4, -1, "nf1")), frame(m.Write(K4, 2**64, "nf1")), frame(m.Write(K4, 1.5, "nf1")),
    frame(m.Write(K4, True, "nf1")), frame(m.Gone(K4, "1")), frame(m.Write(K4, 1, "nf1", b"", 2**64)),
    frame(None, seq=-1), frame(None, ack=2**64), frame(None, epoch=None), frame(None, src_inc=1.0),
    frame(None, src=None), frame(None, src=b"lb1"), frame(None, src=Text("lb1")),
    frame(None, src="x" * 256), frame(None, src="\udfff"), frame(None, src=Encodes()),
    frame(m.Ack(K4, 1, Encodes())), frame(m.Write(K4, 1, Encodes(), b"p")),
    frame(m.Ack(K4, 1, "nf1"), src="x" * 256),
    frame(m.Heartbeat("lb1", 1, 1)), frame(m.Query(K4, "nf1")), m.Query(K4, "nf1"), None, "text",
]


@pytest.mark.parametrize("msg", UNUSUAL, ids=repr)
@pytest.mark.parametrize("secret", [SECRET, b"", "text"], ids=["secret", "empty", "str"])
def test_encode_of_unusual_values_is_the_generic_one(msg, secret):
    assert outcome(wire.encode, msg, secret) == outcome(wire._encode_generic, msg, secret)
    for fast_path in (wire._encode_fast, wire._encode_fast_py):
        fast = outcome(fast_path, msg, secret)
        if fast != ("value", shape(None)):
            assert fast == outcome(wire._encode_generic, msg, secret)


@pytest.mark.parametrize("secret", [b"", "text", None, bytearray(SECRET)], ids=repr)
def test_bad_secret_refused_alike(secret):
    msg = SAMPLES[0]
    assert outcome(wire.encode, msg, secret) == outcome(wire._encode_generic, msg, secret)
    data = wire.encode(msg, SECRET)
    assert check_decode(data, secret)[0] == "WireError"


# --- decoding: the fast path accepts nothing the generic one refuses ----------------------

mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 8), st.integers(0, 255)),
)


def mutate(data: bytes, op: str, pos: int, byte: int) -> bytes:
    out = bytearray(data)
    if not out:
        return bytes([byte])
    if op == "flip":
        out[pos % len(out)] ^= byte
    elif op == "set":
        out[pos % len(out)] = byte
    elif op == "truncate":
        del out[pos % len(out):]
    else:
        out += bytes([byte]) * pos
    return bytes(out)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(hot_frames, secrets, st.lists(mutations, min_size=1, max_size=3), st.booleans())
def test_corrupted_frames(msg, secret, edits, resign):
    """Random single-byte flips and sets, truncations and extra bytes, of the whole payload
    (the MAC no longer matches) or of its signed part, signed again (authentic but
    malformed: the parser's own checks): both paths agree, error message included."""
    data = wire.encode(msg, secret)
    target = signed_part(data) if resign else data
    for op, pos, byte in edits:
        target = mutate(target, op, pos, byte)
    check_decode(sign(target, secret) if resign else target, secret)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda f: type(f.body).__name__)
def test_every_authentic_byte_change_and_truncation(msg):
    """Exhaustively, for sample frames: each byte of the signed part set to a few values, and
    each truncation and extension, signed again."""
    signed = signed_part(wire.encode(msg, SECRET))
    results = set()
    for i in range(len(signed)):
        for value in {0, 1, 2, 5, 7, 0x7F, 0x80, 0xC3, 0xFF, signed[i] ^ 1}:
            results.add(check_decode(sign(signed[:i] + bytes([value]) + signed[i + 1:]))[0])
    for n in range(len(signed)):
        assert check_decode(sign(signed[:n]))[0] == "WireError"
    for extra in (b"\0", b"\x01" * 9, bytes(300)):
        assert check_decode(sign(signed + extra))[0] == "WireError"
    assert results == {"value", "WireError"}


def hot_signed(body, src=b"lb1"):
    """Signed part of a Frame, written out byte by byte (independently of agents.wire)."""
    longs = b"".join(n.to_bytes(8, "big") for n in (3, 2, 7, 12, 11))
    return bytes([wire.VERSION, 1, len(src)]) + src + longs + body


Q = (5).to_bytes(8, "big")


@pytest.mark.parametrize("signed, message", [
    (hot_signed(b"\x02\x01k" + Q + b"\x01n" + b"\x02" + Q), "boolean"),
    (hot_signed(b"\x02\x01k" + Q + b"\x01n" + b"\xff" + Q), "boolean"),
    (hot_signed(b"\x06\x01k" + Q + b"\x02\xc3\x28"), "malformed"),
    (hot_signed(b"\x05\x01k" + Q + b"\x01\xff" + b"\x00" + Q), "malformed"),
    (hot_signed(b"\x07\x01k" + Q, src=b"\xed\xa0\x80"), "malformed"),  # a UTF-8 surrogate
    (hot_signed(b"\x00", src=b"\x80"), "malformed"),
    (hot_signed(b"\x07\x01k" + Q + b"\0"), "trailing"),
    (hot_signed(b"\x00\x00"), "trailing"),
    (hot_signed(b"\x06\x01k" + Q + b"\x05nf1"), "truncated"),
    (hot_signed(b"\x05\x01k" + Q + b"\x03nf1" + b"\x09" + b"p" * 8 + Q), "truncated"),
    (hot_signed(b"\x05\x01k" + Q + b"\x03nf1" + b"\x00" + Q[:7]), "truncated"),
    (hot_signed(b"\x07\xffk" + Q), "truncated"),
    (hot_signed(b"\x07"), "truncated"),
    (hot_signed(b"\x0a\x01k" + Q), "body type"),
    (hot_signed(b"\x07\x01k" + Q)[:-1], "truncated"),
    (bytes([wire.VERSION + 1]) + hot_signed(b"\x07\x01k" + Q)[1:], "version"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_authentic_but_malformed_refused_alike(signed, message):
    data = sign(signed)
    assert wire._decode_fast(data, SECRET) is None and wire._decode_fast_py(data, SECRET) is None
    kind, text = check_decode(data)
    assert kind == "WireError" and message in text


def test_well_formed_hand_written_frames_accepted():
    assert wire.decode(sign(hot_signed(b"\x07\x01k" + Q)), SECRET) == frame(m.Gone(b"k", 5))
    assert wire.decode(sign(hot_signed(b"\x02\x00" + Q + b"\x00" + b"\x01" + Q)), SECRET) == \
        frame(m.Answer(b"", 5, "", True, 5))
    assert wire.decode(sign(hot_signed(b"\x00", src=b"")), SECRET) == frame(None, src="")


@pytest.mark.parametrize("data", [None, 12, "text", b"", b"\x03\x01", b"\x03\x01" + bytes(32),
                                  b"\x03\x01" + bytes(33), b"\x03\x01" + bytes(80)], ids=repr)
def test_non_payloads_refused_alike(data):
    assert outcome(wire.decode, data, SECRET) == outcome(wire._decode_generic, data, SECRET)
    assert outcome(wire.decode, data, SECRET)[0] == "WireError"


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda f: type(f.body).__name__)
def test_bytearray_memoryview_and_wrong_secret(msg):
    data = wire.encode(msg, SECRET)
    assert wire.decode(bytearray(data), SECRET) == wire.decode(memoryview(data), SECRET) == msg
    kind, text = check_decode(data, SECRET[:-1] + b"x")
    assert kind == "WireError" and "bad MAC" in text
    for decode in (wire._decode_fast, wire._decode_fast_py):
        with pytest.raises(WireError, match="bad MAC"):  # itself: a forged frame costs one MAC
            decode(data, SECRET[:-1] + b"x")
