"""Wire format (agents.wire): round trips, scapy equivalence, refusal of bad input."""
import dataclasses
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from agents import messages as m
from agents import wire
from agents.keys import flow_key
from agents.wire import WireError, decode, encode

SECRET = b"0123456789abcdef0123456789abcdef"
K4 = flow_key("10.0.1.1", "10.0.2.1", 6, 40000, 5201)
K6 = flow_key("2001:db8::1", "2001:db8::2", 17, 53, 5353)
BIG = 2**63 - 1


def _mac(secret: bytes, data: bytes) -> bytes:
    """The frame MAC, written out from its definition (wire's docstring): keyed BLAKE2b-256,
    a secret beyond the 64-byte key hashed to 64 bytes first."""
    key = secret if len(secret) <= 64 else \
        hashlib.blake2b(secret, digest_size=64, person=b"chainlb key").digest()
    return hashlib.blake2b(data, key=key, digest_size=32).digest()


def frame(body, **kw):
    args = dict(src="lb1", src_inc=3, dst_inc=2, epoch=7, seq=12, ack=11, body=body)
    args.update(kw)
    return m.Frame(**args)


HAND = [
    frame(None, seq=0),
    frame(m.Query(K4, "nf1")),
    frame(m.Query(K6, "")),
    frame(m.Answer(K4, 5, "nf2")),
    frame(m.Query(K4, "nf1", 2, bytes(range(255)), BIG)),
    frame(m.Answer(K4, 5, "nf2", True, 7)),
    frame(m.Ack(K6, 3, "")),
    frame(m.InsertReq(K4, "nf1", 4)),
    frame(m.DeleteReq(K6, 0)),
    frame(m.Write(K4, BIG, "")),
    frame(m.Write(K6, 1, "nf-ü", b"\x45\x00", 3)),
    frame(m.Ack(K4, 9, "nf3")),
    frame(m.Gone(K4, 10)),
    frame(m.Sync(())),
    frame(m.Sync((m.SyncEntry(K4, 1, "nf1", True),))),
    frame(m.Sync(tuple(m.SyncEntry(K6 if i % 2 else K4, i, f"nf{i}", i % 3 == 0) for i in range(25)))),
    frame(m.SyncDone()),
    frame(m.SyncDone(), src="", src_inc=BIG, dst_inc=0, epoch=BIG, seq=BIG, ack=BIG),
    frame(m.Query(K4, "ñ" * 127), src="ψ" * 127),
    m.ViewMsg(1, 3, "chain", (), ()),
    m.ViewMsg(BIG, 2, "maglev",
              (m.LBInfo("lb1", "02:00:00:00:03:01"),
               m.LBInfo("lb2", "02:00:00:00:03:02", "02:00:00:01:03:02", 3002)),
              (m.NFInfo("nf1", "02:00:00:00:04:01", "active"),
               m.NFInfo("nf2", "02:00:00:00:04:02", "draining"),
               m.NFInfo("nf3", "02:00:00:00:04:03", "failed"))),
    m.Heartbeat("lb1", 4, 1000),
    m.Heartbeat("", 0, 0),
    m.Heartbeat("lb9", BIG, BIG),
    m.Hello("lb2", 7, 123), m.Hello("", 0, 0),
]


# --- strategies --------------------------------------------------------------------------

u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, BIG, 2**64 - 1]))
keys = st.one_of(st.binary(min_size=13, max_size=13), st.binary(min_size=37, max_size=37),
                 st.binary(max_size=255))
names = st.text(max_size=63)  # at most 252 bytes of UTF-8
macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
cluster_macs = st.one_of(st.just(""), macs.filter(lambda mac: mac != "00:00:00:00:00:00"))
entries = st.builds(m.SyncEntry, keys, u64, names, st.booleans())
bodies = st.one_of(
    st.none(),
    st.builds(m.Query, keys, names, u64, st.binary(max_size=255)),
    st.builds(m.Answer, keys, u64, names, st.booleans()),
    st.builds(m.InsertReq, keys, names, u64),
    st.builds(m.DeleteReq, keys, u64),
    st.builds(m.Write, keys, u64, names),
    st.builds(m.Ack, keys, u64, names),
    st.builds(m.Gone, keys, u64),
    st.builds(m.Sync, st.lists(entries, max_size=12).map(tuple)),
    st.just(m.SyncDone()),
)
frames = st.builds(m.Frame, names, u64, u64, u64, u64, u64, bodies)
views = st.builds(m.ViewMsg, u64, st.integers(0, 65535), names,
                  st.lists(st.builds(m.LBInfo, names, macs, cluster_macs, st.integers(0, 65535)),
                           max_size=8).map(tuple),
                  st.lists(st.builds(m.NFInfo, names, macs,
                                     st.sampled_from(["active", "draining", "failed"])),
                           max_size=8).map(tuple))
heartbeats = st.builds(m.Heartbeat, names, u64, u64)
hellos = st.builds(m.Hello, names, u64, u64)
messages = st.one_of(frames, views, heartbeats, hellos)


# --- scapy, independently of the struct codecs --------------------------------------------

ITEM = {layer: cls for cls, layer in wire.LAYERS.items()}
BODY_CODE = {name: code for code, name in wire.BODY_TYPES.items()}
MSG_CODE = {name: code for code, name in wire.MSG_TYPES.items()}


def to_layer(obj):
    """scapy packet built from a dataclass, field by field."""
    kw = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "body":
            kw["body_type"] = BODY_CODE[type(value).__name__] if value is not None else 0
        elif isinstance(value, tuple):
            kw[f.name] = [to_layer(item) for item in value]
        elif isinstance(value, bool):
            kw[f.name] = int(value)
        elif f.name == "cluster_mac":
            kw[f.name] = value or "00:00:00:00:00:00"
        elif isinstance(value, str) and f.name not in ("mac", "state"):
            kw[f.name] = value.encode("utf-8")
        else:
            kw[f.name] = value
    pkt = wire.LAYERS[type(obj)](**kw)
    if isinstance(obj, m.Frame) and obj.body is not None:
        pkt = pkt / to_layer(obj.body)
    return pkt


def from_layer(pkt):
    """Dataclass read back from a dissected scapy layer."""
    cls = ITEM[type(pkt)]
    vals = {}
    for f in dataclasses.fields(cls):
        if f.name == "body":
            if pkt.body_type == BODY_CODE["SyncDone"]:  # scapy makes no layer of zero bytes
                assert not pkt.payload
                vals["body"] = m.SyncDone()
            else:
                vals["body"] = from_layer(pkt.payload) if pkt.body_type else None
            continue
        value = pkt.getfieldval(f.name)
        field = pkt.get_field(f.name)
        if isinstance(value, list):
            value = tuple(from_layer(item) for item in value)
        elif isinstance(field, wire.TextLenField):
            value = value.decode("utf-8")
        elif isinstance(field, wire.BoolField):
            value = bool(value)
        elif f.name == "state":
            value = field.i2s[value]
        elif f.name == "cluster_mac" and value == "00:00:00:00:00:00":
            value = ""
        vals[f.name] = value
    return cls(**vals)


def scapy_encode(msg, secret):
    hdr = wire.ChainLB(version=wire.VERSION, type=MSG_CODE[type(msg).__name__])
    signed = bytes(hdr)[:2] + bytes(to_layer(msg))
    mac = _mac(secret, signed)
    return bytes(wire.ChainLB(version=wire.VERSION, type=hdr.type, hmac=mac) / to_layer(msg))


def scapy_decode(frame_bytes):
    pkt = Ether(frame_bytes)
    assert pkt.type == wire.ETHERTYPE
    assert Raw not in pkt and pkt.lastlayer().name != "Padding"
    return from_layer(pkt[wire.ChainLB].payload), pkt[wire.ChainLB].hmac


def check(msg):
    data = encode(msg, SECRET)
    assert decode(data, SECRET) == msg
    assert data == scapy_encode(msg, SECRET)
    fb = wire.frame_bytes(b"\x02\0\0\0\x03\x02", b"\x02\0\0\0\x03\x01", msg, SECRET) \
        if len(data) <= wire.MAX_PAYLOAD else b"\x02\0\0\0\x03\x02\x02\0\0\0\x03\x01\x88\xb5" + data
    back, mac = scapy_decode(fb)
    assert back == msg and mac == data[2:34]
    return data


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("msg", HAND, ids=lambda x: type(x.body if isinstance(x, m.Frame) else x).__name__)
def test_round_trip_hand_written(msg):
    check(msg)


def test_every_message_type_is_covered():
    covered = {type(x) for x in HAND} | {type(x.body) for x in HAND if isinstance(x, m.Frame)}
    covered |= {m.SyncEntry, m.LBInfo, m.NFInfo, type(None)}
    assert covered == set(wire.LAYERS) | {type(None)}


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_round_trip_generated(msg):
    check(msg)


def test_smallest_message_needs_no_ethernet_padding():
    assert len(encode(m.Heartbeat("", 0, 0), SECRET)) >= 46
    assert len(encode(m.Hello("", 0, 0), SECRET)) >= 46
    assert len(encode(frame(None, src=""), SECRET)) >= 46


def test_frame_bytes_layout():
    msg = frame(m.Ack(K4, 1, "nf1"))
    fb = wire.frame_bytes(b"\xaa" * 6, b"\xbb" * 6, msg, SECRET)
    assert fb[:14] == b"\xaa" * 6 + b"\xbb" * 6 + b"\x88\xb5"
    assert decode(fb[14:], SECRET) == msg
    pkt = Ether(fb)
    assert pkt.dst == "aa:aa:aa:aa:aa:aa" and pkt[wire.ChainLB].type == 1
    assert pkt[wire.FrameL].src == b"lb1" and pkt[wire.AckL].key == K4


def test_frame_bytes_refuses_oversized_and_bad_macs():
    big = frame(m.Sync(tuple(m.SyncEntry(K6, i, "nf1", True) for i in range(40))))
    with pytest.raises(ValueError, match="MTU"):
        wire.frame_bytes(b"\xaa" * 6, b"\xbb" * 6, big, SECRET)
    with pytest.raises(ValueError, match="6 bytes"):
        wire.frame_bytes("aa:aa:aa:aa:aa:aa", b"\xbb" * 6, HAND[1], SECRET)


# --- refusal of bad input ---------------------------------------------------------------

SAMPLES = [HAND[0], HAND[1], HAND[7], HAND[11], HAND[17], HAND[18]]


@pytest.mark.parametrize("msg", SAMPLES)
def test_every_truncation_refused(msg):
    data = encode(msg, SECRET)
    for n in range(len(data)):
        with pytest.raises(WireError):
            decode(data[:n], SECRET)


@pytest.mark.parametrize("msg", SAMPLES)
def test_every_tampered_byte_refused(msg):
    data = encode(msg, SECRET)
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(WireError, match="bad MAC"):
                decode(bytes(bad), SECRET)


@pytest.mark.parametrize("msg", SAMPLES)
def test_wrong_secret_and_trailing_junk_refused(msg):
    data = encode(msg, SECRET)
    with pytest.raises(WireError, match="bad MAC"):
        decode(data, SECRET[:-1] + b"x")
    with pytest.raises(WireError):
        decode(data + b"\0", SECRET)
    with pytest.raises(WireError):
        decode(data, b"")
    with pytest.raises(WireError):
        decode(data, "not bytes")


@pytest.mark.parametrize("data", [None, 12, "text", 10**12, [1, 2], b"", b"\x01"])
def test_non_payloads_refused(data):
    with pytest.raises(WireError):
        decode(data, SECRET)


def test_bytearray_and_memoryview_accepted():
    data = encode(HAND[1], SECRET)
    assert decode(bytearray(data), SECRET) == decode(memoryview(data), SECRET) == HAND[1]


def sign(signed: bytes) -> bytes:
    """A payload with a valid MAC over arbitrary content."""
    return signed[:2] + _mac(SECRET, signed) + signed[2:]


def signed_part(msg) -> bytes:
    data = encode(msg, SECRET)
    return data[:2] + data[34:]


@pytest.mark.parametrize("signed, message", [
    (bytes([wire.VERSION + 1]) + signed_part(HAND[18])[1:], "version"),
    (bytes([wire.VERSION, 5]) + signed_part(HAND[18])[2:], "message type"),
    (bytes([wire.VERSION, 0]) + signed_part(HAND[18])[2:], "message type"),
    (signed_part(frame(m.SyncDone()))[:-1] + b"\x0a", "body type"),
    (signed_part(m.ViewMsg(1, 1, "", (), (m.NFInfo("a", "02:00:00:00:04:01", "failed"),)))[:-1]
     + b"\x07", "state"),
    (signed_part(frame(m.Sync((m.SyncEntry(K4, 1, "a", True),))))[:-1] + b"\x02", "boolean"),
    (signed_part(m.Heartbeat("ab", 1, 1)).replace(b"ab", b"\xff\xfe"), "malformed"),
    (signed_part(m.Heartbeat("ab", 1, 1)) + b"x", "trailing"),
    (signed_part(m.Heartbeat("ab", 1, 1))[:-1], "truncated"),
    (signed_part(frame(m.Query(K4, "nf1")))[:-4], "truncated"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_authentic_but_malformed_refused(signed, message):
    with pytest.raises(WireError, match=message):
        decode(sign(signed), SECRET)


@given(st.binary(max_size=400))
def test_garbage_refused(data):
    with pytest.raises(WireError):
        decode(data, SECRET)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                    st.sampled_from(["set", "insert", "delete"])), min_size=1, max_size=4))
def test_authentic_mutations_refused_or_canonical(msg, edits):
    """Correctly signed mutated payloads: WireError, or a message that encodes to exactly them."""
    signed = bytearray(signed_part(msg))
    for pos, byte, op in edits:
        pos %= len(signed) + 1
        if op == "insert":
            signed[pos:pos] = bytes([byte])
        elif pos < len(signed):
            if op == "set":
                signed[pos] = byte
            else:
                del signed[pos]
    data = sign(bytes(signed))
    try:
        got = decode(data, SECRET)
    except WireError:
        return
    assert encode(got, SECRET) == data


# --- encode refuses what it cannot carry ---------------------------------------------------

@pytest.mark.parametrize("msg, message", [
    (m.Query(K4, "nf1"), "inside a Frame"),
    ("text", "cannot encode"),
    (None, "cannot encode"),
    (frame(m.Query(K4, "x" * 256)), "at most 255"),
    (frame(m.Query(K4, "é" * 128)), "at most 255"),
    (frame(m.Query(b"k" * 256, "nf1")), "at most 255"),
    (frame(m.Query(K4, "nf1", 0, b"p" * 256)), "at most 255"),
    (frame(m.Query("not bytes", "nf1")), "bytes"),
    (frame(m.Query(K4, b"nf1")), "str"),
    (frame(m.Query(K4, "\ud800")), "UTF-8"),
    (frame(m.Write(K4, -1, "nf1")), "cannot encode"),
    (frame(m.Write(K4, 2**64, "nf1")), "cannot encode"),
    (frame(m.Write(K4, 1.5, "nf1")), "cannot encode"),
    (frame(None, seq=-1), "cannot encode"),
    (frame(None, src=None), "str"),
    (frame(m.Heartbeat("lb1", 1, 1)), "not a chain message body"),
    (frame(m.Sync([m.Write(K4, 1, "a")])), "expected SyncEntry"),
    (frame(m.Sync(None)), "tuple of SyncEntry"),
    (frame(m.Sync((m.SyncEntry(K4, 1, "a", 1),))), "bool"),
    (m.ViewMsg(1, 70000, "chain", (), ()), "cannot encode"),
    (m.ViewMsg(1, 3, "chain", (m.LBInfo("lb1", "02:00:00:00:03:0G"),), ()), "MAC"),
    (m.ViewMsg(1, 3, "chain", (m.LBInfo("lb1", "02:00:00:00:03:AB"),), ()), "MAC"),
    (m.ViewMsg(1, 3, "chain", (m.LBInfo("lb1", "02:00:00:00:03:01", "00:00:00:00:00:00"),), ()),
     "stands for none"),
    (m.ViewMsg(1, 3, "chain", (m.LBInfo("lb1", "02:00:00:00:03:01", "02:00"),), ()), "MAC"),
    (m.ViewMsg(1, 3, "chain", (), (m.NFInfo("nf1", "02:00:00:00:04:01", "dead"),)), "state"),
])
def test_encode_refuses(msg, message):
    with pytest.raises(ValueError, match=message):
        encode(msg, SECRET)


@pytest.mark.parametrize("secret", [b"", "text", None, bytearray(b"abc")])
def test_encode_refuses_bad_secret(secret):
    with pytest.raises(ValueError, match="secret"):
        encode(HAND[1], secret)


def test_hmac_depends_on_secret():
    assert encode(HAND[1], SECRET) != encode(HAND[1], SECRET + b"!")
    assert decode(encode(HAND[1], b"other"), b"other") == HAND[1]
