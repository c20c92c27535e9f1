"""Wire format of the chain protocol and of the control channel.

Every message of ``agents.messages`` is a scapy layer below one common header, in raw
Ethernet frames of Ethertype 0x88B5 (IEEE local experimental)::

    Ether / ChainLB(version, type, hmac) / FrameL(...) / WriteL(...)     chain link frame
    Ether / ChainLB / ViewMsgL(... LBInfoL ... NFInfoL ...)             controller -> agents
    Ether / ChainLB / HeartbeatL(...)                                   agent -> controller
    Ether / ChainLB / HelloL(...)                   agent -> agent, LB cluster network

``hmac`` is the message authentication code of every byte of the payload except the field
itself (version, type and all the layers that follow): keyed BLAKE2b (RFC 7693, its keyed
mode is a MAC, as in WireGuard) with a 32-byte digest, keyed with the cluster's shared secret
(a secret longer than BLAKE2b's 64-byte key is hashed to 64 bytes first). Version 3 used
HMAC-SHA256: OpenSSL's code and state behind each HMAC made it the costliest step of a chain
frame on a new connection's path with the agent's caches cold (as a frame's first packet finds
them): 66 us, against 32 for BLAKE2b in Python's hashlib and 17 for the same BLAKE2b compiled
(``agents.native``, where ``make setup`` built it; ``make bench-engine``, frame_mac_cold_us).

The scapy layers are the one definition of the format: ``Ether(frame)`` dissects a
captured frame. ``encode``/``decode`` run per chain frame in the agents, so they do not go
through scapy's (slow) packet objects: they use ``struct`` codecs compiled once, at import,
from the layers' ``fields_desc``; the tests check both give the same bytes and values. The
commonest chain frames (a Write, Answer, Ack or Gone, or a pure link ack) take hand-written
fast paths instead, checked against those codecs (tests/test_wire_fast.py): compiled
(``agents.native``, where built; cold, a Write carrying a SYN encoded and decoded costs 37 us
against 83 in Python: make bench-engine, chain_frame_codec_cold_us), else in Python.

Field conventions: integers are unsigned big-endian (versions, sequence numbers, epochs:
64 bits); keys are bytes and names are UTF-8 text, each behind a 1-byte length (at most
255 bytes); lists are behind a 2-byte count; MAC addresses are 6 bytes (the dataclasses
hold the lowercase ``02:00:00:00:04:01`` form). The smallest message is 51 bytes, above
Ethernet's 46-byte minimum payload, so frames are never padded and ``decode`` can refuse
any trailing byte.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import struct
from operator import attrgetter
from dataclasses import fields as dc_fields

from scapy.fields import (ByteEnumField, ByteField, FieldLenField, LongField, MACField,
                          PacketListField, ShortField, StrLenField, XStrFixedLenField,
                          XStrLenField)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

from agents import messages as m
from agents.native import native as _native

__all__ = ["ETHERTYPE", "VERSION", "MAX_PAYLOAD", "WireError", "encode", "decode",
           "frame_bytes", "LAYERS", "ChainLB"]

ETHERTYPE = 0x88B5
VERSION = 4
MAX_PAYLOAD = 1500  # Ethernet MTU: frame_bytes refuses larger messages
HMAC_LEN = 32
ETH_HLEN = 14


class WireError(Exception):
    """A payload that is not a well-formed, authentic message of this protocol."""


# --- scapy layers --------------------------------------------------------------------------

class TextLenField(StrLenField):
    """UTF-8 text behind a length field (the dataclass holds ``str``)."""


def _key(name):
    return [FieldLenField(f"{name}_len", None, length_of=name, fmt="B"),
            XStrLenField(name, b"", length_from=lambda p: getattr(p, f"{name}_len"))]


def _text(name):
    return [FieldLenField(f"{name}_len", None, length_of=name, fmt="B"),
            TextLenField(name, b"", length_from=lambda p: getattr(p, f"{name}_len"))]


def _list(name, cls):
    return [FieldLenField(f"{name}_count", None, count_of=name, fmt="H"),
            PacketListField(name, [], cls, count_from=lambda p: getattr(p, f"{name}_count"))]


class OptionalMACField(MACField):
    """A MAC address or none: the dataclass holds '' for none, the wire 00:00:00:00:00:00."""


class BoolField(ByteField):
    """0 or 1 (the dataclass holds ``bool``)."""


class _Item(Packet):
    """Element of a list: it ends where its fields end."""

    def extract_padding(self, s):
        return b"", s


MSG_TYPES = {1: "Frame", 2: "ViewMsg", 3: "Heartbeat", 4: "Hello"}
BODY_TYPES = {0: "none", 1: "Query", 2: "Answer", 3: "InsertReq", 4: "DeleteReq", 5: "Write",
              6: "Ack", 7: "Gone", 8: "Sync", 9: "SyncDone"}
NF_STATES = {0: "active", 1: "draining", 2: "failed"}


class ChainLB(Packet):
    name = "ChainLB"
    fields_desc = [ByteField("version", VERSION),
                   ByteEnumField("type", 0, MSG_TYPES),
                   XStrFixedLenField("hmac", b"\0" * HMAC_LEN, HMAC_LEN)]


class FrameL(Packet):
    name = "ChainFrame"
    fields_desc = [*_text("src"), LongField("src_inc", 0), LongField("dst_inc", 0),
                   LongField("epoch", 0), LongField("seq", 0), LongField("ack", 0),
                   ByteEnumField("body_type", 0, BODY_TYPES)]


class QueryL(Packet):
    name = "ChainQuery"
    fields_desc = [*_key("key"), *_text("nf"), LongField("seen", 0), *_key("packet"),
                   LongField("lookup", 0)]


class AnswerL(Packet):
    name = "ChainAnswer"
    fields_desc = [*_key("key"), LongField("ver", 0), *_text("nf"), BoolField("released", 0),
                   LongField("lookup", 0)]


class InsertReqL(Packet):
    name = "ChainInsertReq"
    fields_desc = [*_key("key"), *_text("nf"), LongField("base", 0)]


class DeleteReqL(Packet):
    name = "ChainDeleteReq"
    fields_desc = [*_key("key"), LongField("ver", 0)]


class WriteL(Packet):
    name = "ChainWrite"
    fields_desc = [*_key("key"), LongField("ver", 0), *_text("nf"), *_key("packet"),
                   LongField("lookup", 0)]


class AckL(Packet):
    name = "ChainAck"
    fields_desc = [*_key("key"), LongField("ver", 0), *_text("nf")]


class GoneL(Packet):
    name = "ChainGone"
    fields_desc = [*_key("key"), LongField("ver", 0)]


class SyncEntryL(_Item):
    name = "ChainSyncEntry"
    fields_desc = [*_key("key"), LongField("ver", 0), *_text("nf"), BoolField("committed", 0)]


class SyncL(Packet):
    name = "ChainSync"
    fields_desc = [*_list("entries", SyncEntryL)]


class SyncDoneL(Packet):
    name = "ChainSyncDone"
    fields_desc = []


class LBInfoL(_Item):
    name = "LBInfo"
    fields_desc = [*_text("name"), MACField("mac", None),
                   OptionalMACField("cluster_mac", "00:00:00:00:00:00"), ShortField("port", 0),
                   ShortField("slot", 0), LongField("since", 0)]


class NFInfoL(_Item):
    name = "NFInfo"
    fields_desc = [*_text("name"), MACField("mac", None), ByteEnumField("state", 0, NF_STATES)]


class ViewMsgL(Packet):
    name = "ChainViewMsg"
    fields_desc = [LongField("epoch", 0), ShortField("chain_len", 0), *_text("mode"),
                   *_list("lbs", LBInfoL), *_list("nfs", NFInfoL)]


class HeartbeatL(Packet):
    name = "ChainHeartbeat"
    fields_desc = [*_text("lb"), LongField("epoch", 0), LongField("entries", 0)]


class HelloL(Packet):
    name = "ChainHello"
    fields_desc = [*_text("lb"), LongField("epoch", 0), LongField("seq", 0)]


# dataclass -> layer, and the type codes that bind them
LAYERS: dict[type, type[Packet]] = {
    m.Frame: FrameL, m.ViewMsg: ViewMsgL, m.Heartbeat: HeartbeatL, m.Hello: HelloL,
    m.Query: QueryL, m.Answer: AnswerL, m.InsertReq: InsertReqL, m.DeleteReq: DeleteReqL,
    m.Write: WriteL, m.Ack: AckL, m.Gone: GoneL, m.Sync: SyncL, m.SyncDone: SyncDoneL,
    m.SyncEntry: SyncEntryL, m.LBInfo: LBInfoL, m.NFInfo: NFInfoL,
}
_MSG_CODE = {getattr(m, name): code for code, name in MSG_TYPES.items()}
_BODY_CODE = {getattr(m, name): code for code, name in BODY_TYPES.items() if code}

bind_layers(Ether, ChainLB, type=ETHERTYPE)
for _cls, _code in _MSG_CODE.items():
    bind_layers(ChainLB, LAYERS[_cls], type=_code)
for _cls, _code in _BODY_CODE.items():
    bind_layers(FrameL, LAYERS[_cls], body_type=_code)


# --- struct codecs compiled from the layers ----------------------------------------------

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


def mac_bytes(value: str) -> bytes:
    """``02:00:00:00:04:01`` -> its 6 bytes (ValueError on anything else)."""
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise ValueError(f"MAC address must look like 02:00:00:00:04:01 (lowercase), got {value!r}")
    return bytes.fromhex(value.replace(":", ""))


def _mac_out(raw):
    return raw.hex(":")


_NO_MAC = bytes(6)


def _optional_mac_bytes(value: str) -> bytes:
    if value == "":
        return _NO_MAC
    raw = mac_bytes(value)
    if raw == _NO_MAC:
        raise ValueError("MAC address 00:00:00:00:00:00 stands for none: give '' instead")
    return raw


def _optional_mac_out(raw):
    return "" if raw == _NO_MAC else raw.hex(":")


def _enum(field):
    to_code = {v: k for k, v in field.i2s.items()}

    def enc(value):
        try:
            return to_code[value]
        except (KeyError, TypeError):
            raise ValueError(f"{field.name} must be one of {sorted(to_code)}, got {value!r}") from None

    def dec(code):
        try:
            return field.i2s[code]
        except KeyError:
            raise WireError(f"unknown {field.name} code {code}") from None
    return enc, dec


def _bool_in(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected a bool, got {value!r}")
    return int(value)


def _bool_out(code):
    if code > 1:
        raise WireError(f"bad boolean byte {code}")
    return code == 1


def _getter(names: list[str]):
    """obj -> tuple of those attributes."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        get = attrgetter(names[0])
        return lambda obj: (get(obj),)
    return lambda obj: ()


class _Codec:
    """Encoder/decoder between one dataclass and its layer's fields (the payload apart).

    ``steps`` holds, per variable-length field (and once for trailing fixed fields): a
    struct over the run of fixed fields before it plus its length or count, the getter of
    those fixed attributes, their (index, converter) pairs for encoding and decoding, the
    variable field's name and kind ("text", "bytes" or the codec of its list items).
    The layer lists the dataclass's attributes in order (``body_type`` stands for a
    Frame's ``body``), so values are decoded into a list and passed positionally.
    """

    def __init__(self, cls: type, layer: type[Packet]):
        self.cls = cls
        self.steps = []
        attrs = []
        fmt, names, enc, dec, prefix_for = "!", [], [], [], None
        for field in layer.fields_desc:
            if isinstance(field, FieldLenField):
                fmt += field.fmt.lstrip("!")
                prefix_for = field.length_of or field.count_of
                continue
            attrs.append("body" if field.name == "body_type" else field.name)
            if isinstance(field, (StrLenField, PacketListField)):
                if field.name != prefix_for:
                    raise TypeError(f"{layer.__name__}.{field.name}: no length field before it")
                kind = (_CODECS_BY_LAYER[field.cls] if isinstance(field, PacketListField)
                        else "text" if isinstance(field, TextLenField) else "bytes")
                self.steps.append((struct.Struct(fmt), _getter(names), tuple(enc), tuple(dec),
                                   attrs[-1], kind))
                fmt, names, enc, dec, prefix_for = "!", [], [], [], None
                continue
            conv = None
            if isinstance(field, MACField):
                fmt += "6s"
                conv = ((_optional_mac_bytes, _optional_mac_out)
                        if isinstance(field, OptionalMACField) else (mac_bytes, _mac_out))
            elif field.name == "body_type":
                fmt += field.fmt.lstrip("!")
                enc.append((len(names), _body_code))  # the caller decodes the body
            elif isinstance(field, ByteEnumField):
                fmt += field.fmt.lstrip("!")
                conv = _enum(field)
            elif isinstance(field, (ByteField, ShortField, LongField)):
                fmt += field.fmt.lstrip("!")
                if isinstance(field, BoolField):
                    conv = (_bool_in, _bool_out)
            else:
                raise TypeError(f"{layer.__name__}.{field.name}: unsupported field type")
            if conv:
                enc.append((len(names), conv[0]))
                dec.append((len(names), conv[1]))
            names.append(attrs[-1])
        if names:
            self.steps.append((struct.Struct(fmt), _getter(names), tuple(enc), tuple(dec), None, None))
        if attrs != [f.name for f in dc_fields(cls)]:
            raise TypeError(f"{layer.__name__} fields {attrs} do not match {cls.__name__}")

    def encode(self, obj, out: list) -> None:
        for st, get, enc, _, var, kind in self.steps:
            vals = list(get(obj))
            for i, fn in enc:
                vals[i] = fn(vals[i])
            if var is None:
                _pack(st, vals, obj, out)
                continue
            value = getattr(obj, var)
            if kind.__class__ is _Codec:
                if not isinstance(value, (tuple, list)):
                    raise ValueError(f"{var} must be a tuple of {kind.cls.__name__}, got {value!r}")
                vals.append(len(value))
                _pack(st, vals, obj, out)
                for item in value:
                    if type(item) is not kind.cls:
                        raise ValueError(f"{var}: expected {kind.cls.__name__}, got {item!r}")
                    kind.encode(item, out)
                continue
            raw = _text_in(value, var) if kind == "text" else _bytes_in(value, var)
            vals.append(len(raw))
            _pack(st, vals, obj, out)
            out.append(raw)

    def decode(self, buf: bytes, off: int) -> tuple[list, int]:
        """Attribute values (a Frame's body as its type code) and the offset after them."""
        vals = []
        for st, _, _, dec, var, kind in self.steps:
            raw = st.unpack_from(buf, off)
            off += st.size
            if var is None:
                base = len(vals)
                vals.extend(raw)
                for i, fn in dec:
                    vals[base + i] = fn(vals[base + i])
                continue
            base = len(vals)
            vals.extend(raw)
            n = vals.pop()
            for i, fn in dec:
                vals[base + i] = fn(vals[base + i])
            if kind.__class__ is _Codec:
                items = []
                for _ in range(n):
                    item, off = kind.decode(buf, off)
                    items.append(kind.cls(*item))
                vals.append(tuple(items))
                continue
            end = off + n
            if end > len(buf):
                raise WireError("truncated")
            vals.append(buf[off:end].decode("utf-8") if kind == "text" else buf[off:end])
            off = end
        return vals, off


def _pack(st: struct.Struct, vals: list, obj, out: list) -> None:
    try:
        out.append(st.pack(*vals))
    except struct.error as e:
        raise ValueError(f"cannot encode {obj!r}: {e}") from None


def _text_in(value, name):
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {value!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not encodable as UTF-8: {e}") from None
    if len(raw) > 255:
        raise ValueError(f"{name} is {len(raw)} bytes in UTF-8, at most 255 allowed: {value[:40]!r}...")
    return raw


def _bytes_in(value, name):
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes, got {value!r}")
    if len(value) > 255:
        raise ValueError(f"{name} is {len(value)} bytes long, at most 255 allowed")
    return value


def _body_code(body) -> int:
    if body is None:
        return 0
    try:
        return _BODY_CODE[type(body)]
    except KeyError:
        raise ValueError(f"not a chain message body: {body!r}") from None


_CODECS_BY_LAYER: dict[type, _Codec] = {}
for _cls in (m.SyncEntry, m.LBInfo, m.NFInfo):  # list items first: lists refer to them
    _CODECS_BY_LAYER[LAYERS[_cls]] = _Codec(_cls, LAYERS[_cls])
for _cls, _layer in LAYERS.items():
    if _layer not in _CODECS_BY_LAYER:
        _CODECS_BY_LAYER[_layer] = _Codec(_cls, _layer)
_CODEC_BY_CLS = {c.cls: c for c in _CODECS_BY_LAYER.values()}
_MSG_BY_CODE = {code: _CODEC_BY_CLS[cls] for cls, code in _MSG_CODE.items()}
_BODY_BY_CODE = {code: _CODEC_BY_CLS[cls] for cls, code in _BODY_CODE.items()}

_HEAD = struct.Struct("!BB")
_HDR_LEN = _HEAD.size + HMAC_LEN


# --- authentication ----------------------------------------------------------------------

# secret -> the BLAKE2b key it gives (itself when it fits in a key)
_KEYS: dict[bytes, bytes] = {}
_BAD_HMAC = "bad MAC (wrong secret or tampered frame)"
_blake2b = hashlib.blake2b
_MAX_KEY = hashlib.blake2b.MAX_KEY_SIZE
_KEY_PERSON = b"chainlb key"          # the hash of a long secret differs from any other hash


def mac_key(secret: bytes) -> bytes:
    """The BLAKE2b key of a shared secret."""
    if type(secret) is not bytes or not secret:
        raise ValueError("the shared secret must be non-empty bytes")
    if len(secret) <= _MAX_KEY:
        return secret
    return hashlib.blake2b(secret, digest_size=_MAX_KEY, person=_KEY_PERSON).digest()


def _key_of(secret: bytes) -> bytes:
    """``mac_key(secret)``, remembered; ValueError for a bad secret."""
    key = _KEYS.get(secret) if type(secret) is bytes else None
    if key is None:
        key = mac_key(secret)
        if len(_KEYS) >= 16:
            _KEYS.clear()
        _KEYS[secret] = key
    return key


def _sign(secret: bytes, data: bytes) -> bytes:
    key = _key_of(secret)
    if _native is not None:                    # the same bytes, compiled (agents.native)
        mac = _native.mac(key, data)
        if mac is not None:
            return mac
    return _blake2b(data, key=key, digest_size=HMAC_LEN).digest()


# --- generic encode/decode: every message, through the compiled codecs ------------------

def _encode_generic(msg, secret: bytes) -> bytes:
    """``encode`` through the compiled codecs (the tests compare the fast paths with it)."""
    code = _MSG_CODE.get(type(msg))
    if code is None:
        raise ValueError(f"cannot encode {type(msg).__name__}: only Frame, ViewMsg, Heartbeat and Hello "
                         "travel on the wire (chain bodies go inside a Frame)")
    out = [_HEAD.pack(VERSION, code)]
    _CODEC_BY_CLS[type(msg)].encode(msg, out)
    if code == 1 and msg.body is not None:
        _CODEC_BY_CLS[type(msg.body)].encode(msg.body, out)
    signed = b"".join(out)
    return signed[:2] + _sign(secret, signed) + signed[2:]


def _decode_generic(data: bytes, secret: bytes):
    """``decode`` through the compiled codecs (the tests compare the fast paths with it)."""
    try:
        buf = data if type(data) is bytes else bytes(memoryview(data))
        if len(buf) < _HDR_LEN:
            raise WireError(f"truncated: {len(buf)} bytes, the header alone is {_HDR_LEN}")
        signed = buf[:2] + buf[_HDR_LEN:]
        if not hmac.compare_digest(_sign(secret, signed), buf[2:_HDR_LEN]):
            raise WireError(_BAD_HMAC)
        version, code = _HEAD.unpack_from(signed)
        if version != VERSION:
            raise WireError(f"unsupported version {version} (expected {VERSION})")
        codec = _MSG_BY_CODE.get(code)
        if codec is None:
            raise WireError(f"unknown message type {code}")
        vals, off = codec.decode(signed, 2)
        if code == 1:
            body_code = vals[-1]
            if body_code:
                body_codec = _BODY_BY_CODE.get(body_code)
                if body_codec is None:
                    raise WireError(f"unknown body type {body_code}")
                body, off = body_codec.decode(signed, off)
                vals[-1] = body_codec.cls(*body)
            else:
                vals[-1] = None
        if off != len(signed):
            raise WireError(f"{len(signed) - off} trailing bytes")
        return codec.cls(*vals)
    except WireError:
        raise
    except struct.error:
        raise WireError("truncated payload") from None
    except Exception as e:  # struct.error, UnicodeDecodeError, bad secret type, ...
        raise WireError(f"malformed payload: {e}") from None


# --- fast paths: the hot chain frames -----------------------------------------------------
#
# Per connection, the agents exchange a handful of Frames carrying a Write, an Answer, an Ack
# or a Gone, and pure link acks (no body). For these five shapes only, encode and decode are
# written out by hand: the same bytes and values as the generic codecs, at about half their
# cost. They take only what is plainly valid; anything else (another shape, a value of an
# unexpected type or range, a malformed payload) goes to the generic path, which encodes it,
# decodes it or says what is wrong, as for any message. tests/test_wire_fast.py checks both
# paths agree; the layouts they assume are checked against the layers just below.

_FAST_LAYOUTS = {  # name:kind of each field, in order (B, Q: unsigned integers)
    FrameL: "src_len:B src:text src_inc:Q dst_inc:Q epoch:Q seq:Q ack:Q body_type:B",
    WriteL: "key_len:B key:bytes ver:Q nf_len:B nf:text packet_len:B packet:bytes lookup:Q",
    AnswerL: "key_len:B key:bytes ver:Q nf_len:B nf:text released:bool lookup:Q",
    AckL: "key_len:B key:bytes ver:Q nf_len:B nf:text",
    GoneL: "key_len:B key:bytes ver:Q",
}


def _layout(layer: type[Packet]) -> str:
    def kind(field):
        if isinstance(field, StrLenField):
            return "text" if isinstance(field, TextLenField) else "bytes"
        return "bool" if isinstance(field, BoolField) else field.fmt.lstrip("!")
    return " ".join(f"{field.name}:{kind(field)}" for field in layer.fields_desc)


for _layer, _expected in _FAST_LAYOUTS.items():
    if _layout(_layer) != _expected:
        raise TypeError(f"{_layer.__name__} changed ({_layout(_layer)}): update the fast paths")
for _cls in (m.Frame, m.Write, m.Answer, m.Ack, m.Gone):  # made without __init__ (see _new)
    if hasattr(_cls, "__post_init__") or hasattr(_cls, "__slots__"):
        raise TypeError(f"{_cls.__name__} needs its __init__: update the fast paths")

_FRAME_HEAD = _HEAD.pack(VERSION, _MSG_CODE[m.Frame])
_FRAME_LONGS = struct.Struct("!QQQQQB")  # src_inc dst_inc epoch seq ack, body_type
_QB = struct.Struct("!QB")  # ver, nf_len
_BQ = struct.Struct("!BQ")  # released, lookup
_Q = struct.Struct("!Q")
_BYTE = [bytes((n,)) for n in range(256)]  # length bytes (IndexError beyond 255)
_WRITE, _ANSWER, _ACK, _GONE = (_BODY_CODE[c] for c in (m.Write, m.Answer, m.Ack, m.Gone))
_FAST_CODE = {type(None): 0, m.Write: _WRITE, m.Answer: _ANSWER, m.Ack: _ACK, m.Gone: _GONE}
_FAST_BODIES = frozenset(_FAST_CODE.values())
# Decoded dataclasses are made by filling a bare instance's __dict__: the same object as
# their __init__ makes (a frozen dataclass's sets each field through object.__setattr__), at
# well under half its cost. The check above fails the import if they gain a __post_init__.
_new = object.__new__
# the same two paths compiled (agents/native.c), told the codes and classes they build
_codec = _native if _native is not None and hasattr(_native, "frame_types") else None
if _codec is not None:
    _codec.frame_types(VERSION, _MSG_CODE[m.Frame], m.Frame, _WRITE, m.Write, _ANSWER, m.Answer,
                       _ACK, m.Ack, _GONE, m.Gone)


def _compiled_key(secret: bytes) -> bytes | None:
    """The MAC key of ``secret`` for the compiled codec; None where it is not built or the
    secret is bad (the Python fast paths then run, and say so as they always have)."""
    if _codec is None:
        return None
    try:
        return _key_of(secret)
    except ValueError:
        return None


def _encode_fast(msg, secret: bytes) -> bytes | None:
    """``encode`` of a Frame of a hot shape whose values are plainly valid; None otherwise
    (compiled where agents.native is built, else ``_encode_fast_py``)."""
    key = _compiled_key(secret)
    if key is not None:
        payload = _codec.frame_encode(msg, key)
        if payload is not None:
            return payload
    return _encode_fast_py(msg, secret)


def _encode_fast_py(msg, secret: bytes) -> bytes | None:
    """``_encode_fast`` in Python."""
    if type(msg) is not m.Frame:
        return None
    b = msg.body
    code = _FAST_CODE.get(type(b))
    if code is None:
        return None
    try:
        src = msg.src
        if type(src) is not str:
            return None
        src = src.encode()
        if code == 0:
            body = ()
        else:
            key = b.key
            if type(key) is not bytes:
                return None
            if code == _GONE:
                body = (_BYTE[len(key)], key, _Q.pack(b.ver))
            else:
                nf = b.nf
                if type(nf) is not str:
                    return None
                nf = nf.encode()
                body = (_BYTE[len(key)], key, _QB.pack(b.ver, len(nf)), nf)
                if code == _ANSWER:
                    released = b.released
                    if type(released) is not bool:
                        return None
                    body += (_BQ.pack(released, b.lookup),)
                elif code == _WRITE:
                    packet = b.packet
                    if type(packet) is not bytes:
                        return None
                    body += (_BYTE[len(packet)], packet, _Q.pack(b.lookup))
        signed = b"".join((_FRAME_HEAD, _BYTE[len(src)], src,
                           _FRAME_LONGS.pack(msg.src_inc, msg.dst_inc, msg.epoch, msg.seq, msg.ack,
                                             code), *body))
    except Exception:  # a length beyond 255, an integer out of range, a lone surrogate, ...
        return None
    return _FRAME_HEAD + _sign(secret, signed) + signed[2:]


def _decode_fast(data: bytes, secret: bytes):
    """``decode`` of an authentic, well-formed Frame of a hot shape; None for anything else
    (another message, an unusual or malformed payload), WireError if its MAC is wrong
    (compiled where agents.native is built, else ``_decode_fast_py``)."""
    key = _compiled_key(secret)
    if key is not None:
        msg = _codec.frame_decode(data, key)
        if msg is False:
            raise WireError(_BAD_HMAC)
        if msg is not None:
            return msg
    return _decode_fast_py(data, secret)


def _decode_fast_py(data: bytes, secret: bytes):
    """``_decode_fast`` in Python."""
    if type(data) is not bytes or len(data) <= _HDR_LEN or data[:2] != _FRAME_HEAD:
        return None
    # the body type, after src and the five longs: not yet authentic, it only picks the path
    at = _HDR_LEN + 1 + data[_HDR_LEN] + 40
    if at >= len(data) or data[at] not in _FAST_BODIES:
        return None
    signed = _FRAME_HEAD + data[_HDR_LEN:]
    try:
        mac = _sign(secret, signed)
    except ValueError:  # a bad secret
        return None
    if not hmac.compare_digest(mac, data[2:_HDR_LEN]):
        raise WireError(_BAD_HMAC)
    try:
        return _parse_fast(signed)
    except Exception:  # truncated, bad UTF-8, ...
        return None


def _parse_fast(s: bytes):
    """The Frame in the signed bytes ``s`` (one of the hot shapes); None or an exception if
    it is malformed. Slices do not check bounds: the final ``off == len(s)`` does, as each
    one ends at or before ``off``."""
    off = 3 + s[2]
    src = s[3:off].decode()
    src_inc, dst_inc, epoch, seq, ack, code = _FRAME_LONGS.unpack_from(s, off)
    off += 41  # _FRAME_LONGS
    if code == 0:
        body = None
    else:
        end = off + 1 + s[off]
        key = s[off + 1:end]
        if code == _GONE:
            (ver,) = _Q.unpack_from(s, end)
            off = end + 8
            body = _new(m.Gone)
            body.__dict__.update(key=key, ver=ver)
        else:
            ver, n = _QB.unpack_from(s, end)
            off = end + 9 + n  # _QB, nf
            nf = s[end + 9:off].decode()
            if code == _ACK:
                body = _new(m.Ack)
                body.__dict__.update(key=key, ver=ver, nf=nf)
            elif code == _ANSWER:
                released, lookup = _BQ.unpack_from(s, off)
                off += 9
                if released > 1:
                    return None
                body = _new(m.Answer)
                body.__dict__.update(key=key, ver=ver, nf=nf, released=released == 1, lookup=lookup)
            else:  # _WRITE
                end = off + 1 + s[off]
                packet = s[off + 1:end]
                (lookup,) = _Q.unpack_from(s, end)
                off = end + 8
                body = _new(m.Write)
                body.__dict__.update(key=key, ver=ver, nf=nf, packet=packet, lookup=lookup)
    if off != len(s):
        return None
    frame = _new(m.Frame)
    frame.__dict__.update(src=src, src_inc=src_inc, dst_inc=dst_inc, epoch=epoch, seq=seq, ack=ack,
                          body=body)
    return frame


# --- public API ----------------------------------------------------------------------------

def encode(msg, secret: bytes) -> bytes:
    """Authenticated payload (the bytes after the Ethernet header) of a Frame, ViewMsg,
    Heartbeat or Hello."""
    payload = _encode_fast(msg, secret)
    return _encode_generic(msg, secret) if payload is None else payload


def decode(data: bytes, secret: bytes):
    """Message from an authenticated payload; WireError on any bad, forged or tampered input."""
    msg = _decode_fast(data, secret)
    return _decode_generic(data, secret) if msg is None else msg


_ETHERTYPE_BYTES = ETHERTYPE.to_bytes(2, "big")


def frame_bytes(dst_mac: bytes, src_mac: bytes, msg, secret: bytes) -> bytes:
    """Whole Ethernet frame carrying ``msg``; ValueError if it exceeds the MTU."""
    if not (isinstance(dst_mac, bytes) and isinstance(src_mac, bytes)
            and len(dst_mac) == 6 and len(src_mac) == 6):
        raise ValueError(f"MAC addresses must be 6 bytes each, got {dst_mac!r} and {src_mac!r}")
    payload = encode(msg, secret)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"{type(msg).__name__} is {len(payload)} bytes, more than the "
                         f"{MAX_PAYLOAD}-byte MTU: send it in smaller pieces")
    return dst_mac + src_mac + _ETHERTYPE_BYTES + payload
