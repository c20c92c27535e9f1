"""The NF health probe's frame (pure)."""
import ipaddress
import struct

from hypothesis import given, strategies as st

from ryu_apps.probe import PROBE_DST, PROBE_PORT, PROBE_SRC, parse_probe, probe_frame

NF = bytes.fromhex("020000000402")
CTL = bytes.fromhex("02000000ff01")


def test_a_probe_is_an_ipv4_udp_datagram_with_a_valid_header_checksum():
    f = probe_frame(NF, CTL, "nf2", 7)
    assert f[:6] == NF and f[6:12] == CTL and f[12:14] == b"\x08\x00"
    ip = f[14:34]
    assert ip[0] == 0x45 and ip[9] == 17 and ip[8] == 64
    assert ipaddress.IPv4Address(ip[12:16]) == ipaddress.IPv4Address(PROBE_SRC)
    assert ipaddress.IPv4Address(ip[16:20]) == ipaddress.IPv4Address(PROBE_DST)
    words = struct.unpack("!10H", ip)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF                   # the header sums to all ones: checksum valid
    assert struct.unpack("!H", ip[2:4])[0] == len(f) - 14
    assert struct.unpack("!HH", f[34:38]) == (PROBE_PORT, PROBE_PORT)


@given(name=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1,
                    max_size=32), seq=st.integers(0, 2**64 - 1))
def test_a_returned_probe_reads_back(name, seq):
    f = probe_frame(NF, CTL, name, seq)
    # the NF routes it back: new MACs, TTL one less (and the checksum changed with it)
    back = CTL + NF + f[12:22] + bytes([f[22] - 1]) + f[23:]
    assert parse_probe(back) == (name, seq)


def test_other_frames_are_not_probes():
    f = probe_frame(NF, CTL, "nf1", 1)
    assert parse_probe(f[:40]) is None                              # truncated
    assert parse_probe(f[:12] + b"\x88\xb5" + f[14:]) is None       # not IPv4
    assert parse_probe(f[:23] + b"\x06" + f[24:]) is None           # TCP
    assert parse_probe(f[:26] + bytes(4) + f[30:]) is None          # another source
    assert parse_probe(f[:36] + b"\x00\x35" + f[38:]) is None       # another port
    assert parse_probe(f[:42] + b"X" + f[43:]) is None              # not our magic
