"""The LB agent's first-packet timings (``--trace-first``, ``agents.lb.FirstTrace``)."""
from __future__ import annotations

import json
import struct

from agents.lb import FirstTrace
from agents.messages import Answer, Gone


def tcp_frame(flags: int, ihl: int = 5, proto: int = 6) -> bytes:
    eth = bytes(6) + bytes(6) + b"\x08\x00"
    ip = bytes([0x40 | ihl, 0]) + struct.pack("!H", 20 * ihl // 5 + 20) + bytes(5) + \
        bytes([proto]) + bytes(10) + bytes(4 * ihl - 20)
    tcp = bytes(13) + bytes([flags]) + bytes(6)
    return eth + ip + tcp


def test_the_handshake_packets_are_named_and_nothing_else():
    assert FirstTrace.kind(tcp_frame(0x02)) == "syn"
    assert FirstTrace.kind(tcp_frame(0x12)) == "synack"
    assert FirstTrace.kind(tcp_frame(0x10)) == ""            # an ACK
    assert FirstTrace.kind(tcp_frame(0x04)) == ""            # an RST
    assert FirstTrace.kind(tcp_frame(0x02, proto=17)) == ""  # UDP
    assert FirstTrace.kind(tcp_frame(0x02, ihl=6)) == ""     # IP options: not parsed
    assert FirstTrace.kind(b"\x00" * 12 + b"\x88\xb5" + bytes(60)) == ""


def test_records_follow_one_frame_each_and_only_the_traced_ones(tmp_path):
    t = FirstTrace(str(tmp_path / "lb1.first.jsonl"))
    t.woke_ns = 5
    t.start("", 3)                       # a chain frame: named by its body
    t.chain_in(Answer(b"k", 1, "nf1", True, 1))
    t.mark(t.HANDLED)
    t.sent("data")
    t.end()
    t.start("", 4)
    t.chain_in(Gone(b"k", 1))            # not on the path: no record
    t.end()
    t.start("syn", 6)
    t.mark(t.HANDLED)
    t.mark(t.ENCODED)
    t.sent("Write")
    t.sent("data")
    t.end()
    t.sent("Write")                      # outside any frame: ignored
    t.mark(t.ENCODED)
    t.write()
    recs = [json.loads(line) for line in (tmp_path / "lb1.first.jsonl").read_text().splitlines()]
    assert [r["in"] for r in recs] == ["Answer", "syn"]
    assert [r["kernel_ns"] for r in recs] == [3, 6] and all(r["woke_ns"] == 5 for r in recs)
    assert [m[0] for m in recs[0]["marks"]] == ["read", "decoded", "handled", "sent data", "done"]
    assert [m[0] for m in recs[1]["marks"]] == ["read", "handled", "encoded", "sent Write",
                                                "sent data", "done"]
    for r in recs:                        # both clocks only go forward
        for clock in (1, 2):
            times = [m[clock] for m in r["marks"]]
            assert times == sorted(times)
