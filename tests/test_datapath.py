"""The LB node's packet logic (agents.datapath), sans-I/O: frames built with scapy go in, the
actions that come out are checked. Time is passed in; nothing sleeps, nothing touches a socket.

- maglev mode: one NF per connection (both directions, fragments in any order, ICMP errors);
- local mode: how long a connection stays in the node's table, per TCP state and timeouts;
- chain mode: three Datapath nodes whose chain frames the test delivers to each other.
"""
from __future__ import annotations

import functools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, Ether, Raw, fragment

from agents.chain import Send
from agents.conntrack import (CLOSE, CLOSING, ESTABLISHED, FIN_WAIT, LB_MARGIN, OTHER,
                              RELATED, CtTimeouts)
from agents.datapath import Datapath, Decided
from agents.keys import flow_key
from agents.maglev import Maglev
from agents.messages import DeleteReq, LBInfo, NFInfo, ViewMsg

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SA, PA, FA, RA = SYN | ACK, PSH | ACK, FIN | ACK, RST | ACK

GW_MAC = "02:00:00:00:00:fe"
C1, C2, S1, S2, ROUTER = "10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2", "10.0.9.9"
NF_MACS = {f"nf{i}": f"02:00:00:00:04:0{i}" for i in range(1, 5)}
NF_BY_MAC = {bytes.fromhex(m.replace(":", "")): n for n, m in NF_MACS.items()}
DEFAULT = CtTimeouts()
LB = DEFAULT.lb_timeouts()
LONGEST = max(DEFAULT.asdict().values())


def lb_mac(name: str) -> bytes:
    return bytes.fromhex("0200000003" + f"{int(name[2:]):02x}")


def view(epoch: int, nfs, mode: str, lbs=("lb1",), chain_len: int = 1) -> ViewMsg:
    """nfs: names (active) or (name, state) pairs."""
    infos = []
    for nf in nfs:
        name, state = (nf, "active") if isinstance(nf, str) else nf
        infos.append(NFInfo(name, NF_MACS[name], state))
    return ViewMsg(epoch, chain_len, mode,
                   tuple(LBInfo(n, lb_mac(n).hex(":"), port=i + 1, slot=i + 1)
                         for i, n in enumerate(lbs)),
                   tuple(infos))


def datapath(mode: str, nfs=("nf1", "nf2", "nf3"), name: str = "lb1", **kw) -> Datapath:
    dp = Datapath(name, mode, lb_mac(name), **kw)
    assert dp.view(view(1, nfs, mode, lbs=(name,)), 0.0) == []
    return dp


# ------------------------------------------------------------------------ frames

def eth(pkt) -> bytes:
    return bytes(Ether(src=GW_MAC, dst="02:00:00:00:03:01") / pkt)


@functools.lru_cache(maxsize=None)
def tcp(src, dst, sport, dport, flags, ipid=1, payload=b"") -> bytes:
    return eth(IP(src=src, dst=dst, id=ipid) / TCP(sport=sport, dport=dport, flags=flags)
               / Raw(payload))


@functools.lru_cache(maxsize=None)
def udp(src, dst, sport, dport, ipid=1, size=20) -> bytes:
    return eth(IP(src=src, dst=dst, id=ipid) / UDP(sport=sport, dport=dport) / Raw(b"u" * size))


@functools.lru_cache(maxsize=None)
def fragments(src, dst, proto, sport, dport, ipid, size=3000) -> tuple[bytes, ...]:
    """A large datagram's fragments, first one first (each with its Ethernet header)."""
    l4 = (UDP(sport=sport, dport=dport) if proto == 17
          else TCP(sport=sport, dport=dport, flags=PA))
    frags = fragment(IP(src=src, dst=dst, id=ipid) / l4 / Raw(b"f" * size), fragsize=1000)
    assert len(frags) >= 3 and frags[0].frag == 0 and frags[0].flags.MF
    return tuple(eth(f) for f in frags)


@functools.lru_cache(maxsize=None)
def icmp_error(src, dst, quoted_src, quoted_dst, proto, sport, dport, type_=3, code=3,
               ipid=1) -> bytes:
    """An ICMP error from ``src`` to ``dst`` quoting a packet quoted_src:sport ->
    quoted_dst:dport (its IP header and first 8 bytes, as a router or host sends it)."""
    l4 = (UDP(sport=sport, dport=dport) if proto == 17
          else TCP(sport=sport, dport=dport, flags=PA))
    quoted = bytes(IP(src=quoted_src, dst=quoted_dst, id=ipid + 1000) / l4 / Raw(b"q" * 40))[:28]
    return eth(IP(src=src, dst=dst, id=ipid) / ICMP(type=type_, code=code) / Raw(quoted))


def frames(actions) -> list[bytes]:
    return [a for a in actions if isinstance(a, bytes)]


def decided(actions) -> list[Decided]:
    return [a for a in actions if isinstance(a, Decided)]


def nf_of(frame: bytes) -> str:
    return NF_BY_MAC[frame[:6]]


def check_forwarded(out: bytes, dp: Datapath, packet: bytes) -> str:
    """``out`` is ``packet`` rewritten by ``dp`` towards an NF: the NF's name."""
    assert out[6:12] == dp.mac and out[12:] == packet[12:]
    return nf_of(out)


def maglev(nfs, key) -> str:
    return _maglev(tuple(sorted(nfs))).lookup(key)


@functools.lru_cache(maxsize=None)
def _maglev(nfs) -> Maglev:
    return Maglev(nfs)


# ------------------------------------------------------------------------ maglev mode

def test_maglev_one_nf_per_connection_both_directions():
    dp = datapath("maglev")
    used = set()
    for i in range(24):
        sport = 40000 + i
        key = flow_key(C1, S1, 6, sport, 80)
        conv = [tcp(C1, S1, sport, 80, SYN), tcp(S1, C1, 80, sport, SA),
                tcp(C1, S1, sport, 80, ACK), tcp(C1, S1, sport, 80, PA, 2, b"GET /"),
                tcp(S1, C1, 80, sport, PA, 2, b"200 OK"), tcp(S1, C1, 80, sport, FA, 3),
                tcp(C1, S1, sport, 80, FA, 3), tcp(S1, C1, 80, sport, ACK, 4)]
        nfs, decisions = set(), []
        for t, pkt in enumerate(conv):
            out = dp.packet(pkt, float(t))
            (frame,) = frames(out)
            nfs.add(check_forwarded(frame, dp, pkt))
            decisions += decided(out)
        assert len(nfs) == 1
        (nf,) = nfs
        assert nf == maglev(("nf1", "nf2", "nf3"), key)
        assert decisions == [Decided(key, nf)]              # once per connection
        used.add(nf)
    assert len(used) > 1                                    # the connections are spread
    assert dp.counts["decisions"] == 24


@pytest.mark.parametrize("ending", [[(C1, S1, FA), (S1, C1, FA), (C1, S1, ACK)],
                                    [(S1, C1, RA)]])
def test_maglev_reused_five_tuple_is_a_new_decision(ending):
    dp = datapath("maglev")
    key = flow_key(C1, S1, 6, 40500, 80)
    out = dp.packet(tcp(C1, S1, 40500, 80, SYN), 0.0)
    assert len(decided(out)) == 1
    dp.packet(tcp(S1, C1, 80, 40500, SYN | ACK, 1), 0.1)
    dp.packet(tcp(C1, S1, 40500, 80, ACK, 2), 0.2)
    for i, (a, b, flags) in enumerate(ending):
        pa, pb = (40500, 80) if a == C1 else (80, 40500)
        assert decided(dp.packet(tcp(a, b, pa, pb, flags, 10 + i), 1.0)) == []
    assert dp.conns[key].state in (CLOSING, CLOSE)
    out = dp.packet(tcp(C1, S1, 40500, 80, SYN, 20), 2.0)        # a new connection
    (f,) = frames(out)
    assert decided(out) == [Decided(key, nf_of(f))]
    assert dp.conns[key].state != CLOSE and dp.conns[key].fins == 0


def test_maglev_fragments_follow_the_connection_in_order():
    dp = datapath("maglev")
    key = flow_key(C1, S1, 17, 5000, 6000)
    (plain,) = frames(dp.packet(udp(C1, S1, 5000, 6000), 0.0))
    nf = nf_of(plain)
    frags = fragments(C1, S1, 17, 5000, 6000, ipid=777)
    for i, f in enumerate(frags):
        out = dp.packet(f, 1.0 + i)
        (frame,) = frames(out)
        assert check_forwarded(frame, dp, f) == nf
        assert decided(out) == []
    # the reply direction's fragments too
    for f in fragments(S1, C1, 17, 6000, 5000, ipid=4242):
        (frame,) = frames(dp.packet(f, 9.0))
        assert check_forwarded(frame, dp, f) == nf
    assert dp.counts["fragments"] == 2 * len(frags) and dp.counts["frag_held"] == 0
    assert dp.conns[key].state == OTHER


def test_maglev_later_fragments_before_the_first_are_held_then_released():
    dp = datapath("maglev")
    (plain,) = frames(dp.packet(udp(C1, S1, 5001, 6000), 0.0))
    nf = nf_of(plain)
    first, *later = fragments(C1, S1, 17, 5001, 6000, ipid=778)
    later = later[::-1]                                     # last one first
    for f in later:
        assert dp.packet(f, 1.0) == []                      # nothing out: held
    assert dp.counts["frag_held"] == len(later)
    out = dp.packet(first, 2.0)
    got = frames(out)
    assert [g[12:] for g in got] == [first[12:]] + [f[12:] for f in later]
    assert {check_forwarded(g, dp, p) for g, p in zip(got, [first] + later)} == {nf}
    assert dp.frag_held == {}
    # a fresh node, where the datagram's fragments are the connection's first packets
    dp2 = datapath("maglev", name="lb2")
    for f in later:
        assert dp2.packet(f, 1.0) == []
    got = frames(dp2.packet(first, 2.0))
    assert len(got) == 1 + len(later) and {nf_of(g) for g in got} == {nf}


def test_fragments_whose_first_never_comes_expire():
    dp = datapath("maglev", frag_timeout=30.0)
    first, *later = fragments(C2, S2, 17, 7000, 53, ipid=999)
    for f in later:
        assert dp.packet(f, 10.0) == []
    done = fragments(C1, S1, 17, 5002, 6000, ipid=1000)     # a complete datagram
    for f in done:
        assert len(frames(dp.packet(f, 10.0))) == 1
    assert dp.housekeeping(39.9) == []
    assert dp.counts["frag_expired"] == 0 and len(dp.frag_held) == 1
    dp.housekeeping(40.0)
    assert dp.counts["frag_expired"] == len(later)
    assert dp.frag_held == {} and dp.frags == {}
    # the first fragment after the expiry: only itself goes out
    assert len(frames(dp.packet(first, 41.0))) == 1


def test_icmp_error_goes_to_its_connections_nf():
    dp = datapath("maglev")
    key = flow_key(C1, S1, 17, 5353, 9999)
    (plain,) = frames(dp.packet(udp(C1, S1, 5353, 9999), 0.0))
    nf = nf_of(plain)
    for src, type_, code in ((S1, 3, 3), (ROUTER, 11, 0), (ROUTER, 3, 4)):
        err = icmp_error(src, C1, C1, S1, 17, 5353, 9999, type_, code)
        out = dp.packet(err, 1.0)
        (frame,) = frames(out)
        assert check_forwarded(frame, dp, err) == nf
        assert decided(out) == []
    assert dp.counts["icmp_errors"] == 3
    assert dp.conns[key].state == OTHER
    # an ICMP error about a TCP connection, quoting the server's side
    tkey = flow_key(C1, S1, 6, 41000, 80)
    (f,) = frames(dp.packet(tcp(C1, S1, 41000, 80, SYN), 2.0))
    err = icmp_error(ROUTER, S1, S1, C1, 6, 80, 41000, 3, 1)
    (g,) = frames(dp.packet(err, 2.5))
    assert nf_of(g) == nf_of(f) == maglev(("nf1", "nf2", "nf3"), tkey)
    # an echo request is not an error: its own connection
    echo = eth(IP(src=C1, dst=S1) / ICMP(type=8) / Raw(b"ping"))
    dp.packet(echo, 3.0)
    assert dp.counts["icmp_errors"] == 4
    assert dp.conns[flow_key(C1, S1, 1, 0, 0)].state == OTHER


def test_icmp_error_about_an_unknown_connection_is_related_and_forgotten():
    dp = datapath("maglev")
    key = flow_key(C2, S2, 17, 6666, 7777)
    err = icmp_error(S2, C2, C2, S2, 17, 6666, 7777)
    out = dp.packet(err, 100.0)
    (frame,) = frames(out)
    nf = check_forwarded(frame, dp, err)
    assert nf == maglev(("nf1", "nf2", "nf3"), key)         # deterministic: the inner key
    (other,) = frames(datapath("maglev", name="lb2").packet(err, 0.0))
    assert nf_of(other) == nf
    assert dp.conns[key].state == RELATED
    assert dp.counts["icmp_errors"] == 1
    # kept for the longest timeout of all (it cannot know the connection's state)
    dp.housekeeping(100.0 + LONGEST)
    assert key in dp.conns
    dp.housekeeping(100.0 + LONGEST + LB_MARGIN)
    assert key not in dp.conns
    assert dp.counts["forgotten"] == 1 and dp.counts["deletes"] == 0


# ------------------------------------------------------------------------ local mode

def open_tcp(dp: Datapath, t: float, sport: int, client=C1, server=S1) -> bytes:
    key = flow_key(client, server, 6, sport, 80)
    for pkt in (tcp(client, server, sport, 80, SYN), tcp(server, client, 80, sport, SA),
                tcp(client, server, sport, 80, ACK)):
        assert len(frames(dp.packet(pkt, t))) == 1
    assert dp.conns[key].state == ESTABLISHED
    return key


def present(dp: Datapath, key: bytes) -> bool:
    in_conns, in_table = key in dp.conns, key in dp.picker.local
    assert in_conns == in_table, (in_conns, in_table)
    return in_conns


EPS = 0.01


def test_local_one_fin_then_idle_stays():
    dp = datapath("local")
    key = open_tcp(dp, 0.0, 42000)
    dp.packet(tcp(C1, S1, 42000, 80, FA, 2), 5.0)
    dp.packet(tcp(S1, C1, 80, 42000, ACK, 2), 5.0)
    assert dp.conns[key].state == FIN_WAIT
    nf_wait = max(DEFAULT.tcp_fin_wait, DEFAULT.tcp_close_wait)
    dp.housekeeping(5.0 + nf_wait)
    dp.housekeeping(5.0 + LB[FIN_WAIT] - EPS)
    assert present(dp, key) and dp.counts["deletes"] == 0
    # the half-closed connection still sends: its frames go to the same NF, its timer restarts
    t = 5.0 + LB[FIN_WAIT] - EPS
    (f,) = frames(dp.packet(tcp(S1, C1, 80, 42000, PA, 3, b"tail"), t))
    assert nf_of(f) == dp.picker.local[key]
    dp.housekeeping(t + LB[FIN_WAIT] - EPS)
    assert present(dp, key)
    dp.housekeeping(t + LB[FIN_WAIT] + EPS)
    assert not present(dp, key) and dp.counts["deletes"] == 1


@pytest.mark.parametrize("order", ["client_first", "server_first", "simultaneous"])
def test_local_closed_connection_removed_after_time_wait(order):
    dp = datapath("local")
    key = open_tcp(dp, 0.0, 42001)
    c_fin, s_fin = tcp(C1, S1, 42001, 80, FA, 5), tcp(S1, C1, 80, 42001, FA, 5)
    c_ack, s_ack = tcp(C1, S1, 42001, 80, ACK, 6), tcp(S1, C1, 80, 42001, ACK, 6)
    seq = {"client_first": [c_fin, s_ack, s_fin, c_ack],
           "server_first": [s_fin, c_ack, c_fin, s_ack],
           "simultaneous": [c_fin, s_fin, c_ack, s_ack]}[order]
    for pkt in seq:
        dp.packet(pkt, 10.0)
    assert dp.conns[key].state == CLOSING
    dp.housekeeping(10.0 + DEFAULT.tcp_time_wait)          # the NF still holds TIME_WAIT
    dp.housekeeping(10.0 + DEFAULT.tcp_time_wait + LB_MARGIN - EPS)
    assert present(dp, key) and dp.counts["deletes"] == 0
    dp.housekeeping(10.0 + DEFAULT.tcp_time_wait + LB_MARGIN + EPS)
    assert not present(dp, key) and dp.counts["deletes"] == 1
    # the 5-tuple again: a new connection, decided afresh
    out = dp.packet(tcp(C1, S1, 42001, 80, SYN, 9), 200.0)
    assert len(frames(out)) == 1 and len(decided(out)) == 1 and present(dp, key)


@pytest.mark.parametrize("rst", [tcp(C1, S1, 42002, 80, RST, 7), tcp(S1, C1, 80, 42002, RA, 7)])
def test_local_reset_connection_removed_after_close(rst):
    dp = datapath("local")
    key = open_tcp(dp, 0.0, 42002)
    dp.packet(rst, 20.0)
    assert dp.conns[key].state == CLOSE
    dp.housekeeping(20.0 + DEFAULT.tcp_close)
    dp.housekeeping(20.0 + DEFAULT.tcp_close + LB_MARGIN - EPS)
    assert present(dp, key) and dp.counts["deletes"] == 0
    dp.housekeeping(20.0 + DEFAULT.tcp_close + LB_MARGIN + EPS)
    assert not present(dp, key) and dp.counts["deletes"] == 1


def test_local_idle_established_is_kept_with_default_timeouts():
    dp = datapath("local")
    key = open_tcp(dp, 0.0, 42003)
    for idle in (120.0, 121.0, 600.0, 3600.0, 86400.0, float(DEFAULT.tcp_established)):
        dp.housekeeping(idle)
        assert present(dp, key), idle
    dp.housekeeping(DEFAULT.tcp_established + LB_MARGIN + EPS)
    assert not present(dp, key) and dp.counts["deletes"] == 1


def test_local_udp_removed_after_the_stream_timeout():
    dp = datapath("local")
    key = flow_key(C1, S1, 17, 5004, 6000)
    dp.packet(udp(C1, S1, 5004, 6000), 0.0)
    dp.packet(udp(S1, C1, 6000, 5004), 1.0)
    assert dp.conns[key].state == OTHER
    dp.housekeeping(1.0 + max(DEFAULT.udp, DEFAULT.udp_stream) + LB_MARGIN - EPS)
    assert present(dp, key)
    dp.housekeeping(1.0 + max(DEFAULT.udp, DEFAULT.udp_stream) + LB_MARGIN + EPS)
    assert not present(dp, key) and dp.counts["deletes"] == 1


def test_local_custom_established_timeout():
    t = CtTimeouts(tcp_established=5, udp=3, udp_stream=4)
    dp = datapath("local", timeouts=t)
    key = open_tcp(dp, 0.0, 42005)
    ukey = flow_key(C1, S1, 17, 5005, 6000)
    dp.packet(udp(C1, S1, 5005, 6000), 0.0)
    dp.housekeeping(4 + LB_MARGIN - EPS)
    assert present(dp, key) and present(dp, ukey)
    dp.housekeeping(4 + LB_MARGIN + EPS)
    assert present(dp, key) and not present(dp, ukey)
    dp.housekeeping(5 + LB_MARGIN - EPS)
    assert present(dp, key)
    dp.housekeeping(5 + LB_MARGIN + EPS)
    assert not present(dp, key) and dp.counts["deletes"] == 2


def test_local_related_entry_is_forgotten_from_the_table_too():
    """An ICMP error about a connection this node never saw puts the key in the node's
    table (local mode); when the RELATED entry expires, the table must not keep it forever
    (the heartbeat reports len(picker.local) as the node's entries)."""
    dp = datapath("local")
    key = flow_key(C2, S2, 17, 6667, 7777)
    assert len(frames(dp.packet(icmp_error(S2, C2, C2, S2, 17, 6667, 7777), 0.0))) == 1
    assert dp.conns[key].state == RELATED
    dp.housekeeping(LONGEST + LB_MARGIN + EPS)
    assert dp.counts["forgotten"] == 1 and dp.counts["deletes"] == 0
    assert key not in dp.conns
    assert key not in dp.picker.local
    assert dp.heartbeat()[1] == 0


def _moving_keys(before, after, n, sport0=43000, want=None):
    """TCP keys (with their client port) whose Maglev NF differs between two NF sets."""
    out = []
    for sport in range(sport0, sport0 + 5000):
        key = flow_key(C1, S1, 6, sport, 80)
        a, b = maglev(before, key), maglev(after, key)
        if a != b and (want is None or b == want):
            out.append((sport, key))
            if len(out) == n:
                return out
    raise AssertionError("no such key")


def test_local_nf_added_keeps_decided_connections():
    dp = datapath("local", nfs=("nf1", "nf2"))
    old = {}
    for sport, key in _moving_keys(("nf1", "nf2"), ("nf1", "nf2", "nf3"), 5):
        open_tcp(dp, 0.0, sport)
        old[sport] = dp.picker.local[key]
    dp.view(view(2, ("nf1", "nf2", "nf3"), "local"), 1.0)
    for sport, nf in old.items():
        out = dp.packet(tcp(C1, S1, sport, 80, PA, 3, b"more"), 2.0)
        (f,) = frames(out)
        assert nf_of(f) == nf and decided(out) == []        # not moved
    # a new connection may go to the new NF
    ((sport, key),) = _moving_keys(("nf1", "nf2"), ("nf1", "nf2", "nf3"), 1, 46000, "nf3")
    out = dp.packet(tcp(C1, S1, sport, 80, SYN), 3.0)
    assert [nf_of(f) for f in frames(out)] == ["nf3"] and decided(out) == [Decided(key, "nf3")]


def test_local_failed_nf_moves_its_connections():
    dp = datapath("local", nfs=("nf1", "nf2", "nf3"))
    keys = {}
    for sport in range(44000, 44030):
        keys[sport] = open_tcp(dp, 0.0, sport)
    gone = dp.picker.local[keys[44000]]
    dp.view(view(2, [(n, "failed" if n == gone else "active") for n in ("nf1", "nf2", "nf3")],
                 "local"), 1.0)
    for sport, key in keys.items():
        before = dp.conns[key].nf
        out = dp.packet(tcp(C1, S1, sport, 80, PA, 3, b"x"), 2.0)
        (f,) = frames(out)
        assert nf_of(f) != gone
        if before == gone:
            assert decided(out) == [Decided(key, nf_of(f))]
        else:
            assert nf_of(f) == before and decided(out) == []


# ------------------------------------------------------------------------ chain mode

class Cluster:
    """Datapath nodes in chain mode; the test delivers their Send actions FIFO."""

    def __init__(self, names=("lb1", "lb2", "lb3"), chain_len=2, nfs=("nf1", "nf2")):
        self.names, self.chain_len, self.now = names, chain_len, 0.0
        self.dps = {n: Datapath(n, "chain", lb_mac(n)) for n in names}
        self.queue: deque[tuple[str, Send]] = deque()
        self.out: list[tuple[str, bytes]] = []           # (node, frame to an NF)
        self.decided: list[tuple[str, Decided]] = []
        self.sends: list[tuple[str, Send]] = []
        self.epoch = 0
        self.set_nfs(nfs)

    def set_nfs(self, nfs):
        self.epoch += 1
        v = view(self.epoch, nfs, "chain", self.names, self.chain_len)
        for n, dp in self.dps.items():
            self.feed(n, dp.view(v, self.now))
        self.settle()

    def feed(self, node: str, actions) -> list:
        for a in actions:
            if isinstance(a, Send):
                self.sends.append((node, a))
                self.queue.append((node, a))
            elif isinstance(a, bytes):
                self.out.append((node, a))
            elif isinstance(a, Decided):
                self.decided.append((node, a))
            else:
                raise AssertionError(f"unexpected action {a!r}")
        return actions

    def packet(self, node: str, pkt: bytes) -> list:
        return self.feed(node, self.dps[node].packet(pkt, self.now))

    def deliver(self) -> None:
        while self.queue:
            src, send = self.queue.popleft()
            assert send.msg.src == src
            self.feed(send.dst, self.dps[send.dst].chain(send.msg, self.now))

    def settle(self, step: float = 0.02, limit: int = 500) -> None:
        """Deliver and tick until every node is synced, nothing is pending and a tick round
        sends nothing."""
        for _ in range(limit):
            self.deliver()
            self.now += step
            quiet = True
            for n, dp in self.dps.items():
                if self.feed(n, dp.tick(self.now)):
                    quiet = False
            self.deliver()
            if quiet and all(dp.node.synced and not dp.buffered for dp in self.dps.values()):
                return
        raise AssertionError("the cluster did not settle")

    def head(self, key: bytes) -> str:
        return self.dps["lb1"].node.view.chain(key)[0]

    def frames_of(self, pkts) -> list[tuple[str, bytes]]:
        """The frames out (in order) that carry one of ``pkts``."""
        bodies = {p[12:] for p in pkts}
        return [(n, f) for n, f in self.out if f[12:] in bodies]


def _chain_key(cluster: Cluster, sport0: int, pred=lambda key: True):
    for sport in range(sport0, sport0 + 5000):
        key = flow_key(C1, S1, 6, sport, 80)
        if cluster.head(key) == "lb1" and pred(key):
            return sport, key
    raise AssertionError("no such key")


def test_the_tail_answers_the_asker_before_it_forwards_the_first_packet():
    """The tail commits, sends the Answer, then the first packet: its reply returns to the
    asker (the head), which holds it until the Answer comes. Sent the other way round, the
    Answer lost that race in most new connections on the testbed (the SYN-ACK held at the
    head in 114 of 205, against 42 of 205 in this order)."""
    cl = Cluster(chain_len=3)
    sport, key = _chain_key(cl, 46000)
    syn = tcp(C1, S1, sport, 80, SYN, 1)
    assert frames(cl.packet("lb1", syn)) == []
    tail_actions = None
    while cl.queue:
        src, send = cl.queue.popleft()
        out = cl.feed(send.dst, cl.dps[send.dst].chain(send.msg, cl.now))
        if frames(out):
            tail_actions = out
    tail = cl.dps["lb1"].node.view.chain(key)[-1]
    assert tail != "lb1" and cl.frames_of([syn]) == [(tail, cl.frames_of([syn])[0][1])]
    kinds = [type(a.msg.body).__name__ if isinstance(a, Send) else type(a).__name__
             for a in tail_actions]
    assert kinds.index("Answer") < kinds.index("bytes")
    answer = next(a for a in tail_actions if isinstance(a, Send) and a.dst == "lb1")
    assert type(answer.msg.body).__name__ == "Answer"


def test_chain_connection_lifecycle():
    cl = Cluster()
    sport, key = _chain_key(cl, 45000)
    lb1, lb2, lb3 = (cl.dps[n] for n in ("lb1", "lb2", "lb3"))
    # the first packets at lb1: nothing out until the chain decides
    held = [tcp(C1, S1, sport, 80, SYN, 1), tcp(C1, S1, sport, 80, SYN, 2),
            tcp(C1, S1, sport, 80, PA, 3, b"early")]
    for pkt in held:
        out = cl.packet("lb1", pkt)
        assert frames(out) == [] and decided(out) == []
    assert cl.out == [] and key in lb1.buffered
    cl.settle()
    got = cl.frames_of(held)
    assert [f[12:] for _, f in got] == [p[12:] for p in held]          # in order
    nfs = {nf_of(f) for _, f in got}
    assert len(nfs) == 1
    (nf,) = nfs
    assert nf == lb1.picker.propose(key)
    assert [d for n, d in cl.decided if n == "lb1"] == [Decided(key, nf)]
    assert lb1.conns[key].nf == nf and lb1.buffered == {}

    # the same connection's packets at lb2 (as after a view change): the same NF
    at_lb2 = [tcp(S1, C1, 80, sport, SA, 4), tcp(C1, S1, sport, 80, ACK, 5)]
    for pkt in at_lb2:
        cl.packet("lb2", pkt)
    cl.settle()
    assert [nf_of(f) for _, f in cl.frames_of(at_lb2)] == [nf, nf]
    assert lb2.conns[key].state == ESTABLISHED

    # an ICMP error about it at lb3: the same NF, tracked as RELATED only
    err = icmp_error(ROUTER, C1, C1, S1, 6, sport, 80, 3, 4)
    cl.packet("lb3", err)
    cl.settle()
    assert [nf_of(f) for _, f in cl.frames_of([err])] == [nf]
    assert lb3.conns[key].state == RELATED and lb3.counts["icmp_errors"] == 1

    # the connection ends at lb1; after its timeout lb1 deletes the entry
    end = [tcp(C1, S1, sport, 80, FA, 6), tcp(S1, C1, 80, sport, ACK, 6),
           tcp(S1, C1, 80, sport, FA, 7), tcp(C1, S1, sport, 80, ACK, 7)]
    for pkt in end:
        cl.packet("lb1", pkt)
    assert [nf_of(f) for _, f in cl.frames_of(end)] == [nf] * 4
    assert lb1.conns[key].state == CLOSING
    t_end = cl.now
    cl.feed("lb1", lb1.housekeeping(t_end + DEFAULT.tcp_time_wait))
    assert lb1.counts["deletes"] == 0 and key in lb1.node.cache
    cl.now = t_end + LB[CLOSING] + EPS
    cl.feed("lb1", lb1.housekeeping(cl.now))
    assert lb1.counts["deletes"] == 1 and key not in lb1.conns
    cl.settle()
    head = cl.dps[cl.head(key)].node
    assert head.store[key].nf == "" and head.store[key].ver >= 2      # a tombstone
    assert head.store[key].committed
    tail = cl.dps[lb1.node.view.chain(key)[-1]].node
    assert tail.store[key].nf == ""
    assert all(key not in dp.node.cache for dp in cl.dps.values())     # Gone reached all

    # lb3 saw only the ICMP error: it forgets, never deletes
    cl.now += LONGEST + LB_MARGIN + EPS
    cl.feed("lb3", lb3.housekeeping(cl.now))
    cl.settle()
    assert key not in lb3.conns
    assert lb3.counts["forgotten"] == 1 and lb3.counts["deletes"] == 0
    lb3_bodies = [type(s.msg.body).__name__ for n, s in cl.sends if n == "lb3"]
    assert lb3_bodies and not any(isinstance(s.msg.body, DeleteReq)
                                  for n, s in cl.sends if n == "lb3"), lb3_bodies


@pytest.mark.parametrize("reused", [False, True])
def test_chain_delete_elsewhere_does_not_move_a_live_connection(reused):
    """reused: the connection is a reused 5-tuple (a SYN after an RST) that the cached entry
    sent to the old connection's NF: that is the NF it uses, and keeps."""
    cl = Cluster(nfs=("nf1", "nf2"))
    two, three = ("nf1", "nf2"), ("nf1", "nf2", "nf3")
    sport, key = _chain_key(cl, 47000, lambda k: maglev(two, k) != maglev(three, k))
    lb1, lb2 = cl.dps["lb1"], cl.dps["lb2"]
    cl.packet("lb1", tcp(C1, S1, sport, 80, SYN))
    cl.settle()
    nf = lb1.conns[key].nf
    assert nf == maglev(two, key)
    if reused:
        cl.packet("lb1", tcp(S1, C1, 80, sport, RA, 2))
        assert lb1.conns[key].state == CLOSE
        (f,) = frames(cl.packet("lb1", tcp(C1, S1, sport, 80, SYN, 3)))   # the cached entry
        assert nf_of(f) == nf and lb1.conns[key].nf == nf
    cl.packet("lb2", tcp(S1, C1, 80, sport, SA))
    cl.settle()
    assert lb2.conns[key].nf == nf

    cl.set_nfs(three)                                        # an NF was added
    moved = lb1.picker.propose(key)
    assert moved != nf                                       # Maglev now proposes another

    # lb2 deletes the entry (its copy of the connection went idle, say)
    assert all(isinstance(a, Send) for a in cl.feed("lb2", lb2.node.delete(key, cl.now)))
    cl.settle()
    head = cl.dps[cl.head(key)].node
    assert head.store[key].nf == "" and key not in lb1.node.cache
    tomb = head.store[key].ver

    # lb1 still sees the connection: its lookup re-inserts the NF it used, not Maglev's
    n_out = len(cl.out)
    pkt = tcp(C1, S1, sport, 80, PA, 9, b"still here")
    assert frames(cl.packet("lb1", pkt)) == []
    cl.settle()
    assert [nf_of(f) for _, f in cl.out[n_out:]] == [nf]
    assert [d for n, d in cl.decided if n == "lb1"][-1] == Decided(key, nf)
    assert head.store[key].nf == nf and head.store[key].ver > tomb


# ------------------------------------------------- random interleavings, maglev mode

@st.composite
def traffic(draw):
    """Packets of a few connections, interleaved at random, with idle gaps."""
    n = draw(st.integers(1, 4))
    items = []          # (connection index, frame) or ("idle", seconds)
    conns = []
    ipid = iter(range(1, 60000))
    for k in range(n):
        proto = draw(st.sampled_from([6, 17]))
        client, server = draw(st.sampled_from([(C1, S1), (C2, S1), (C1, S2), (S2, C2)]))
        sport, dport = 30000 + k, draw(st.sampled_from([80, 53, 443]))
        conns.append(flow_key(client, server, proto, sport, dport))
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["pkt", "pkt", "frag", "icmp"]))
            fwd = draw(st.booleans())
            a, b, pa, pb = (client, server, sport, dport) if fwd else (server, client, dport, sport)
            if kind == "pkt":
                if proto == 6:
                    flags = draw(st.sampled_from([SYN, SA, ACK, PA, FA, RST, RA]))
                    items.append((k, tcp(a, b, pa, pb, flags, next(ipid))))
                else:
                    items.append((k, udp(a, b, pa, pb, next(ipid))))
            elif kind == "frag":
                frags = fragments(a, b, proto, pa, pb, next(ipid))
                if draw(st.booleans()):
                    frags = frags[1:]                       # its first fragment is lost
                items += [(k, f) for f in frags]
            else:
                src = draw(st.sampled_from([b, ROUTER]))
                type_, code = draw(st.sampled_from([(3, 3), (3, 1), (11, 0), (12, 0)]))
                items.append((k, icmp_error(src, a, a, b, proto, pa, pb, type_, code,
                                            next(ipid))))
    items += [("idle", draw(st.sampled_from([1.0, 15.0, 31.0, 200.0])))
              for _ in range(draw(st.integers(0, 3)))]
    return conns, draw(st.permutations(items))


@settings(max_examples=120, deadline=None)
@given(traffic())
def test_maglev_interleavings_keep_each_connection_on_one_nf(spec):
    conns, items = spec
    nfs = ("nf1", "nf2", "nf3")
    dp = datapath("maglev", nfs=nfs)
    owner = {}
    for k, frame in items:
        if k != "idle":
            assert owner.setdefault(frame[12:], k) == k
    expect = {k: maglev(nfs, key) for k, key in enumerate(conns)}
    now, n_in, n_out = 0.0, 0, 0
    for k, item in items:
        if k == "idle":
            now += item
            assert frames(dp.housekeeping(now)) == []
            continue
        now += 0.001
        n_in += 1
        out = dp.packet(item, now)
        for frame in frames(out):
            n_out += 1
            k_out = owner[frame[12:]]
            assert frame[6:12] == dp.mac
            assert nf_of(frame) == expect[k_out], (k_out, conns[k_out])
        for d in decided(out):
            assert d.nf == expect[conns.index(d.key)]
    held = sum(len(frags) for _, frags in dp.frag_held.values())
    c = dp.counts
    assert c["rx"] == n_in
    assert c["malformed"] == c["dropped_no_nf"] == c["frag_dropped"] == 0
    assert n_out == n_in - held - c["frag_expired"]


def test_chain_node_removed_from_the_view_drops_what_it_buffers():
    """Lookups pending when a node leaves the view are never answered: their packets are
    counted and dropped, not held forever, and new ones are not buffered."""
    cl = Cluster()
    dp = cl.dps["lb3"]
    sport, key = _chain_key(cl, 47000, lambda k: "lb3" not in cl.dps["lb1"].node.view.chain(k))
    dp.packet(tcp(C1, S1, sport, 80, SYN), cl.now)          # its frames are not delivered
    assert dp.buffered
    cl.queue.clear()
    dp.view(view(cl.epoch + 1, ("nf1", "nf2"), "chain", ("lb1", "lb2"), 2), cl.now)
    assert not dp.buffered and dp.counts["dropped_not_member"] == 1
    assert dp.packet(tcp(C1, S1, sport + 1, 80, SYN), cl.now) == []
    assert not dp.buffered and dp.counts["dropped_not_member"] == 2


def test_chain_icmp_error_about_no_connection_inserts_nothing():
    """An ICMP error about a connection the table does not hold asks the chain without
    inserting: it is dropped (as the NF would drop it), no entry is created anywhere, and the
    node keeps no state for it; a real packet of the key afterwards is decided normally."""
    cl = Cluster()
    sport = 48000
    key = flow_key(C1, S1, 17, sport, 9)
    err = icmp_error(S1, C1, C1, S1, 17, sport, 9)
    cl.packet("lb3", err)
    cl.settle()
    dp = cl.dps["lb3"]
    assert cl.frames_of([err]) == [] and dp.counts["dropped_no_entry"] == 1
    assert key not in dp.conns and not dp.buffered
    assert all(key not in d.node.store for d in cl.dps.values()), "nothing inserted"
    pkt = udp(C1, S1, sport, 9)
    cl.packet("lb3", pkt)
    cl.settle()
    assert len(cl.frames_of([pkt])) == 1
    tail = cl.dps["lb1"].node.view.chain(key)[-1]
    assert cl.dps[tail].node.replica().get(key) == nf_of(cl.frames_of([pkt])[0][1])


@pytest.mark.parametrize("frame", [
    b"\x02" * 12 + b"\x08\x00",                                   # no IPv4 header at all
    b"\x02" * 12 + b"\x08\x00" + b"\x45" + b"\x00" * 5,           # a truncated header
    b"\x02" * 12 + b"\x08\x00" + b"\x40" + b"\x00" * 25,          # IHL 0
    b"\x02" * 12 + b"\x08\x00" + b"\x4f" + b"\x00" * 25,          # IHL 15, 20 bytes there
    b"\x02" * 12 + b"\x08\x00" + b"\x45\x00\x00\x14\x00\x01\x20\x00\x40\x11" + b"\x00" * 10,
])
@pytest.mark.parametrize("mode", ["chain", "maglev"])
def test_malformed_frames_are_counted_not_fatal(frame, mode):
    dp = datapath(mode) if mode != "chain" else Cluster().dps["lb1"]
    assert dp.packet(frame, 1.0) == [] or dp.counts["malformed"] == 0
    assert dp.counts["malformed"] + dp.counts["frag_held"] >= 1


def test_chain_lookup_pending_when_its_proposed_nf_fails_is_decided_for_a_live_nf():
    """Issue class 2 at the agent: a lookup proposing nf1 is in flight when a view marks nf1
    failed; the agent proposes again, and the connection goes to a live NF."""
    cl = Cluster(nfs=("nf1", "nf2"))
    dp = cl.dps["lb3"]
    sport = next(p for p in range(49000, 50000)
                 if dp.picker.propose(flow_key(C1, S1, 6, p, 80)) == "nf1"
                 and "lb3" not in dp.node.view.chain(flow_key(C1, S1, 6, p, 80)))
    syn = tcp(C1, S1, sport, 80, SYN)
    cl.packet("lb3", syn)
    held = list(cl.queue)
    cl.queue.clear()                                  # its insert is on its way
    cl.epoch += 1
    v = view(cl.epoch, [("nf1", "failed"), "nf2"], "chain", cl.names, cl.chain_len)
    for n, d in cl.dps.items():
        cl.feed(n, d.view(v, cl.now))
    cl.queue.extendleft(reversed(held))
    cl.settle()
    (frame,) = [f for _, f in cl.frames_of([syn])]
    assert nf_of(frame) == "nf2"
    assert all("nf1" not in d.node.replica().values() for d in cl.dps.values())


def test_a_chain_node_born_on_a_view_with_a_failed_nf_never_inserts_it():
    """The agent's first view already marks nf2 failed: its new chain node purges it (a head
    refuses a purged NF's insert, e.g. from an asker still on an older view)."""
    dp = Datapath("lb1", "chain", lb_mac("lb1"))
    dp.view(view(3, ["nf1", ("nf2", "failed"), "nf3"], "chain"), 0.0)
    assert dp.node is not None and dp.node.failed == {"nf2"}
    assert dp.variant == "steered" and dp.status()["variant"] == "steered"
    dp = Datapath("lb1", "chain", lb_mac("lb1"), variant="patent")
    dp.view(view(1, ["nf1"], "chain"), 0.0)
    assert dp.node.view.variant == "patent" and dp.node.failed == set()
