"""Conntrack timeouts and the LB's TCP tracker (agents.conntrack), without any kernel.

The kernel facts used here (default timeouts, sysctl file names, the TCP state table) are
written out as fixed data: nothing reads /proc.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.conntrack import (CLOSE, CLOSING, ESTABLISHED, FIN_WAIT, LB_MARGIN, OTHER,
                              RELATED, STATES, SYN_RECV, SYN_SENT, Conn, CtTimeouts,
                              parse_timeouts)

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SA, PA, FA, RA = SYN | ACK, PSH | ACK, FIN | ACK, RST | ACK

# the kernel's defaults (net/netfilter/nf_conntrack_proto_{tcp,udp,icmp,generic}.c)
KERNEL_DEFAULTS = {
    "tcp_syn_sent": 120, "tcp_syn_recv": 60, "tcp_established": 432000,
    "tcp_fin_wait": 120, "tcp_close_wait": 60, "tcp_last_ack": 30, "tcp_time_wait": 120,
    "tcp_close": 10, "udp": 30, "udp_stream": 120, "icmp": 30, "generic": 600,
}
# the conntrack timeout files of /proc/sys/net/netfilter/ (Linux 6.x, IPv4/v6, TCP, UDP,
# ICMP, generic, SCTP, GRE): a fixed list, so that the test does not depend on this host
KERNEL_TIMEOUT_FILES = frozenset("nf_conntrack_" + n for n in (
    "generic_timeout", "icmp_timeout", "icmpv6_timeout", "udp_timeout", "udp_timeout_stream",
    "tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_established",
    "tcp_timeout_fin_wait", "tcp_timeout_close_wait", "tcp_timeout_last_ack",
    "tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_max_retrans",
    "tcp_timeout_unacknowledged", "gre_timeout", "gre_timeout_stream",
    "sctp_timeout_closed", "sctp_timeout_cookie_wait", "sctp_timeout_cookie_echoed",
    "sctp_timeout_established", "sctp_timeout_shutdown_sent", "sctp_timeout_shutdown_recd",
    "sctp_timeout_shutdown_ack_sent", "sctp_timeout_heartbeat_sent"))
# what each field of CtTimeouts is written to
EXPECTED_SYSCTLS = {
    "tcp_syn_sent": "tcp_timeout_syn_sent", "tcp_syn_recv": "tcp_timeout_syn_recv",
    "tcp_established": "tcp_timeout_established", "tcp_fin_wait": "tcp_timeout_fin_wait",
    "tcp_close_wait": "tcp_timeout_close_wait", "tcp_last_ack": "tcp_timeout_last_ack",
    "tcp_time_wait": "tcp_timeout_time_wait", "tcp_close": "tcp_timeout_close",
    "udp": "udp_timeout", "udp_stream": "udp_timeout_stream", "icmp": "icmp_timeout",
    "generic": "generic_timeout",
}
FIELDS = [f.name for f in dataclasses.fields(CtTimeouts)]

# conntrack.py's docstring: the conntrack states each tracker state stands for
STANDS_FOR = {
    SYN_SENT: ("tcp_syn_sent",),                     # SYN_SENT, SYN_SENT2
    SYN_RECV: ("tcp_syn_recv",),
    ESTABLISHED: ("tcp_established",),
    FIN_WAIT: ("tcp_fin_wait", "tcp_close_wait"),
    CLOSING: ("tcp_last_ack", "tcp_time_wait"),
    CLOSE: ("tcp_close",),
    RELATED: tuple(FIELDS),                          # anything: the longest
}

timeouts_st = st.builds(CtTimeouts, **{
    f: st.one_of(st.integers(1, 700), st.integers(1, CtTimeouts.LIMIT)) for f in FIELDS})


# ----------------------------------------------------------------------- CtTimeouts

def test_defaults_are_the_kernels():
    assert CtTimeouts().asdict() == KERNEL_DEFAULTS


def test_sysctls_name_real_conntrack_files():
    sysctls = CtTimeouts().sysctls()
    assert set(sysctls) == {"net.netfilter.nf_conntrack_" + s for s in EXPECTED_SYSCTLS.values()}
    for name in sysctls:
        prefix, _, leaf = name.rpartition(".")
        assert prefix == "net.netfilter"
        assert leaf in KERNEL_TIMEOUT_FILES, name


def test_sysctls_carry_each_fields_value():
    distinct = CtTimeouts(**{f: 100 + i for i, f in enumerate(FIELDS)})
    sysctls = distinct.sysctls()
    for field, leaf in EXPECTED_SYSCTLS.items():
        assert sysctls["net.netfilter.nf_conntrack_" + leaf] == getattr(distinct, field)


def test_from_mapping_and_parse():
    t = CtTimeouts.from_mapping({"tcp_established": "600", "udp": 20})
    assert (t.tcp_established, t.udp, t.tcp_close) == (600, 20, 10)
    assert parse_timeouts(" tcp_established=600 , udp=20,") == t
    assert parse_timeouts("") == CtTimeouts()


@pytest.mark.parametrize("spec,bad", [
    ("tcp_establised=5", "tcp_establised"),
    ("udp=20,icmp_timeout=5", "icmp_timeout"),
])
def test_unknown_key_is_named_with_the_valid_ones(spec, bad):
    with pytest.raises(ValueError) as exc:
        parse_timeouts(spec)
    msg = str(exc.value)
    assert bad in msg
    for name in FIELDS:
        assert name in msg
    with pytest.raises(ValueError) as exc:
        CtTimeouts.from_mapping(dict(p.split("=") for p in spec.split(",")))
    assert bad in str(exc.value) and all(name in str(exc.value) for name in FIELDS)


@pytest.mark.parametrize("spec,bad", [
    ("udp=abc", "udp"), ("udp=", "udp"), ("tcp_close=0", "tcp_close"),
    ("generic=-5", "generic"), (f"icmp={CtTimeouts.LIMIT + 1}", "icmp"), ("udp", "udp"),
])
def test_bad_value_is_named(spec, bad):
    with pytest.raises(ValueError, match=bad):
        parse_timeouts(spec)


def test_bad_value_in_constructor_is_named():
    with pytest.raises(ValueError, match="tcp_time_wait"):
        CtTimeouts(tcp_time_wait=0)
    with pytest.raises(ValueError, match="udp"):
        CtTimeouts(udp=True)
    with pytest.raises(ValueError, match="icmp"):
        CtTimeouts(icmp=1.5)


def test_default_lb_timeouts():
    lb = CtTimeouts().lb_timeouts()
    assert len(lb) == len(STATES)
    assert lb[ESTABLISHED] == 432000 + LB_MARGIN
    assert lb[CLOSE] == 10 + LB_MARGIN
    assert lb[CLOSING] == 120 + LB_MARGIN
    assert lb[FIN_WAIT] == 120 + LB_MARGIN
    assert lb[RELATED] == 432000 + LB_MARGIN
    assert CtTimeouts().other_timeout(17) == 120 + LB_MARGIN


@settings(max_examples=200, deadline=None)
@given(timeouts_st)
def test_lb_timeouts_never_shorter_than_the_nf(t):
    lb = t.lb_timeouts()
    assert len(lb) == len(STATES)
    for state, fields in STANDS_FOR.items():
        for f in fields:
            assert lb[state] >= getattr(t, f) + LB_MARGIN, (STATES[state], f)
    assert t.other_timeout(17) >= max(t.udp, t.udp_stream) + LB_MARGIN
    assert t.other_timeout(1) >= t.icmp + LB_MARGIN
    for proto in (0, 47, 132):
        assert t.other_timeout(proto) >= t.generic + LB_MARGIN
    c = Conn(OTHER, 0.0)
    assert c.timeout(lb, 123.0) == 123.0
    for state in STANDS_FOR:
        assert Conn(state, 0.0).timeout(lb, 123.0) == lb[state]


# ----------------------------------------------------------------------- the tracker

def track(packets, proto=6):
    """A Conn fed ``packets`` [(flags, low)], and its state after each."""
    (flags, low), rest = packets[0], packets[1:]
    c = Conn.first(proto, flags, low, 0.0)
    states = [c.state]
    for flags, low in rest:
        c.tcp(flags, low)
        states.append(c.state)
    return c, states


HANDSHAKE = [(SYN, True), (SA, False), (ACK, True)]


def test_handshake():
    c, states = track(HANDSHAKE)
    assert states == [SYN_SENT, SYN_RECV, ESTABLISHED]
    assert c.fins == 0


def test_non_tcp_is_other():
    for proto in (17, 1, 47):
        assert Conn.first(proto, 0, True, 5.0).state == OTHER
    c = Conn.first(17, 0, True, 5.0)
    assert (c.seen, c.nf) == (5.0, "")


@pytest.mark.parametrize("first", [ACK, PA])
def test_first_seen_mid_connection_is_established(first):
    assert track([(first, True)])[0].state == ESTABLISHED
    assert track([(first, False)])[0].state == ESTABLISHED


def test_first_seen_syn_ack_is_syn_recv():
    """The docstring: SYN_RECV is "the SYN-ACK seen". A node that first sees the SYN-ACK (the
    SYN went through another node) holds the NF's SYN_RECV at least as long as the NF."""
    c = Conn.first(6, SA, False, 0.0)
    assert c.state == SYN_RECV
    t = CtTimeouts(tcp_established=5)            # shorter than tcp_syn_recv (60)
    assert c.timeout(t.lb_timeouts(), 0.0) >= t.tcp_syn_recv + LB_MARGIN


@pytest.mark.parametrize("low", [True, False])
def test_fin_one_way(low):
    c, states = track(HANDSHAKE + [(FA, low), (ACK, not low), (PA, not low)])
    assert states[3:] == [FIN_WAIT, FIN_WAIT, FIN_WAIT]


@pytest.mark.parametrize("closes", [
    [(FA, True), (ACK, False), (FA, False), (ACK, True)],       # client closes first
    [(FA, False), (ACK, True), (FA, True), (ACK, False)],       # server closes first
    [(FA, True), (FA, False), (ACK, True), (ACK, False)],       # simultaneous close
    [(FA, False), (FA, True), (ACK, False), (ACK, True)],
    [(FIN, True), (FIN, False)],
])
def test_fins_both_ways_close(closes):
    c, states = track(HANDSHAKE + closes)
    assert states[3] == FIN_WAIT
    assert states[-1] == CLOSING
    assert c.fins == 3


@pytest.mark.parametrize("low", [True, False])
def test_retransmitted_fin_keeps_fin_wait(low):
    c, states = track(HANDSHAKE + [(FA, low), (FA, low), (FA, low)])
    assert states[3:] == [FIN_WAIT] * 3


def test_retransmitted_syn_keeps_state():
    assert track([(SYN, True), (SYN, True), (SYN, True)])[1] == [SYN_SENT] * 3
    assert track(HANDSHAKE[:2] + [(SA, False), (SYN, True)])[1][1:] == [SYN_RECV] * 3
    # a SYN-ACK after the handshake (retransmitted) restarts at SYN_RECV, whose timeout is
    # the established one: never shorter
    assert track(HANDSHAKE + [(SYN, True), (SA, False)])[1][3:] == [ESTABLISHED, SYN_RECV]
    t = CtTimeouts().lb_timeouts()
    assert t[SYN_RECV] == t[ESTABLISHED]


def test_fin_before_the_syn_ack_does_not_shorten():
    """conntrack finds a FIN (or a bare ACK) before the SYN-ACK invalid: the LB must not
    take it as a close (found by test_lb_outlives_the_nfs_conntrack)."""
    c, states = track([(SYN, True), (FA, False)])
    assert states == [SYN_SENT, SYN_SENT]
    c, states = track([(SYN, True), (ACK, False), (FA, False), (SA, False), (ACK, True)])
    assert states[-2:] == [SYN_RECV, ESTABLISHED] and c.fins == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([SYN, SA, ACK, PA, FA, FIN]), st.booleans()),
                max_size=8),
       st.sampled_from([RST, RA, RST | FIN, RST | SYN, RST | PA]), st.booleans())
def test_rst_from_any_state_closes(prefix, rst, low):
    c, _ = track(HANDSHAKE + prefix)
    c.tcp(rst, low)
    assert c.state == CLOSE
    c, _ = track([(SYN, True)] + prefix)
    c.tcp(rst, low)
    assert c.state == CLOSE
    assert Conn.first(6, rst, low, 0.0).state == CLOSE


@pytest.mark.parametrize("ending", [
    [(FA, True), (FA, False), (ACK, True)],
    [(RST, True)], [(RA, False)],
    [(FA, True), (RST, False)],
])
@pytest.mark.parametrize("low", [True, False])
def test_syn_after_close_reopens(ending, low):
    c, states = track(HANDSHAKE + ending)
    assert states[-1] in (CLOSING, CLOSE)
    c.tcp(SYN, low)
    assert c.state == SYN_SENT and c.fins == 0
    c.tcp(SA, not low)
    c.tcp(ACK, low)
    assert c.state == ESTABLISHED
    c.tcp(FA, low)
    assert c.state == FIN_WAIT        # the old connection's FINs are not counted again


EXAMPLES = int(os.environ.get("CONNTRACK_EXAMPLES", 300))   # more: a longer search
flags_st = st.one_of(st.sampled_from([SYN, SA, ACK, PA, FA, FIN, RST, RA]),
                     st.integers(0, 0x3F))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.tuples(flags_st, st.booleans()), min_size=1, max_size=25))
def test_tracker_model(packets):
    """CLOSING only after a FIN from both endpoints since the connection (re)opened or its
    SYN-ACK, CLOSE only after an RST since then, FIN_WAIT only after some FIN; a reopen
    starts at SYN_SENT; a FIN while in SYN_SENT counts for nothing."""
    c = None
    fins: set[bool] = set()
    rst = False
    for flags, low in packets:
        prev = c.state if c is not None else None
        bare_syn = flags & (SYN | ACK | RST) == SYN
        if c is None:
            c = Conn.first(6, flags, low, 0.0)
        else:
            c.tcp(flags, low)
        if prev in (CLOSING, CLOSE) and bare_syn:
            fins, rst = set(), False                     # a reused 5-tuple
            assert c.state == SYN_SENT and c.fins == 0
            continue
        if flags & RST:
            rst = True
        elif flags & SYN and flags & ACK:
            fins = set()                                 # a handshake: earlier FINs invalid
        elif flags & FIN and not flags & SYN and prev != SYN_SENT:
            fins.add(low)                                # (before the SYN-ACK: invalid)
        if c.state == CLOSING:
            assert fins == {True, False}, (packets, fins)
        if c.state == CLOSE:
            assert rst, packets
        if c.state == FIN_WAIT:
            assert fins, packets
        assert c.fins == (1 if True in fins else 0) | (2 if False in fins else 0)


# ----------------------------------------------- against the kernel's TCP state table

# nf_conntrack_proto_tcp.c, tcp_conntracks[dir][index][state], flags only (no windows)
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2 = range(10)
sIV, sIG = "IV", "IG"
_ORIG = {
    "syn": (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),
    "synack": (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),
    "fin": (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
    "ack": (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),
    "rst": (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
    "none": (sIV,) * 10,
}
_REPLY = {
    "syn": (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),
    "synack": (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),
    "fin": (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
    "ack": (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),
    "rst": (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
    "none": (sIV,) * 10,
}
_KERNEL_FIELD = {sSS: "tcp_syn_sent", sSR: "tcp_syn_recv", sES: "tcp_established",
                 sFW: "tcp_fin_wait", sCW: "tcp_close_wait", sLA: "tcp_last_ack",
                 sTW: "tcp_time_wait", sCL: "tcp_close", sS2: "tcp_syn_sent"}


def _index(flags: int) -> str:
    if flags & RST:
        return "rst"
    if flags & SYN:
        return "synack" if flags & ACK else "syn"
    if flags & FIN:
        return "fin"
    return "ack" if flags & ACK else "none"


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.tuples(flags_st, st.booleans()), max_size=20), st.data())
def test_lb_outlives_the_nfs_conntrack(rest, data):
    """With the default timeouts, an NF that sees every packet of a connection (from its SYN,
    as with nf_conntrack_tcp_loose=0) never holds it longer than an LB node that sees the
    packets from any point on (another node tracked the start), except from a bare SYN on
    (a bare SYN is a new connection to the LB node)."""
    t = CtTimeouts()
    lb_t = t.lb_timeouts()
    packets = [(SYN, True)] + rest                         # True: the original direction
    starts = [0] + [i for i, (f, _) in enumerate(packets)
                    if i and f & (SYN | ACK | RST) != SYN]
    start = data.draw(st.sampled_from(starts))
    low_is_orig = data.draw(st.booleans())
    nf_state, nf_deadline = sNO, None
    c = None
    for now, (flags, orig) in enumerate(packets):
        table = _ORIG if orig else _REPLY
        new = table[_index(flags)][nf_state]
        if new not in (sIV, sIG):                          # invalid/ignored: no refresh
            nf_state, nf_deadline = new, now + getattr(t, _KERNEL_FIELD[new])
        if now < start:
            continue
        low = orig == low_is_orig
        if c is None:
            c = Conn.first(6, flags, low, now)
        else:
            c.tcp(flags, low)
        lb_deadline = now + c.timeout(lb_t, 0.0)
        assert lb_deadline >= nf_deadline + LB_MARGIN, (
            packets, start, STATES[c.state], nf_state)
