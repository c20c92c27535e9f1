"""The fast path's side of the packet logic (agents.datapath, ``fastpath=True, fast_after=1``), sans-I/O.

The kernel's program is modelled by ``Xdp``: a map that FastPut / FastDel actions keep, and
the rule of agents/fastpath.bpf.c for which packets it forwards. The main property is
differential: a node with the fast path, whose packets ``Xdp`` forwards when it can, sends
every packet to the NF a node without it sends it to, tracks every connection in the same
state and decides the same; and its map is exactly the connections the rule allows.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.conntrack import CtTimeouts
from agents.datapath import FAST_AFTER, FAST_STATES, Datapath, FastDel, FastPut, FastRead
from agents.keys import flow_key, flow_key_raw
from test_datapath import (ACK, C1, C2, FA, PA, RA, S1, S2, SA, SYN, Cluster, datapath,
                           fragments, icmp_error, maglev, nf_of, tcp, udp, view)


class Xdp:
    """The XDP program and its map, as agents/fastpath.bpf.c has them."""

    def __init__(self):
        self.map: dict[bytes, bytes] = {}
        self.seen: dict[bytes, float] = {}

    def apply(self, actions, dp: Datapath | None = None, now: float = 0.0) -> list:
        """Keep the map and answer ``dp``'s deletes and reads (as agents.lb does); the
        other actions."""
        rest = []
        for a in actions:
            if isinstance(a, FastPut):
                self.map[a.key] = a.eth
            elif isinstance(a, FastDel):
                self.map.pop(a.key, None)
                if dp is not None:
                    dp.fast_left(a.key, self.seen.pop(a.key, 0.0))
            elif isinstance(a, FastRead):
                assert dp is not None, "a read outside housekeeping"
                rest += self.apply(dp.fast_seen([(k, self.seen.get(k, 0.0)) for k in a.keys],
                                                now), dp, now)
            else:
                rest.append(a)
        return rest

    @staticmethod
    def key_of(buf: bytes) -> bytes | None:
        """The packet's key if the program may forward it (else it passes it up)."""
        if buf[12:14] != b"\x08\x00" or buf[14] != 0x45 or (buf[20] & 0x3F or buf[21]):
            return None
        proto = buf[23]
        if proto == 6:
            if buf[47] & 0x07:                          # FIN, SYN, RST
                return None
        elif proto != 17:
            return None
        sport, dport = int.from_bytes(buf[34:36], "big"), int.from_bytes(buf[36:38], "big")
        return flow_key_raw(buf[26:30], buf[30:34], proto, sport, dport)

    def forward(self, buf: bytes, now: float) -> bytes | None:
        key = self.key_of(buf)
        eth = self.map.get(key) if key is not None else None
        if eth is None:
            return None
        self.seen[key] = now
        return eth + buf[12:]


def check_rule(dp: Datapath, xdp: Xdp) -> None:
    """The map is the core's image, and holds exactly what the rule allows."""
    assert dp.fast == xdp.map
    for key, c in dp.conns.items():
        eth = dp.fast.get(key)
        if eth is not None:
            assert c.state in FAST_STATES and key[0] in (6, 17)
            assert eth == dp.nf_mac[c.nf] + dp.mac
    assert set(dp.fast) <= set(dp.conns)


# ------------------------------------------------------------------ the differential property

@st.composite
def events(draw):
    n = draw(st.integers(1, 4))
    items = []
    ipid = iter(range(1, 60000))
    for k in range(n):
        proto = draw(st.sampled_from([6, 17]))
        client, server = draw(st.sampled_from([(C1, S1), (C2, S1), (C1, S2)]))
        sport, dport = 31000 + k, draw(st.sampled_from([80, 53]))
        for _ in range(draw(st.integers(1, 10))):
            kind = draw(st.sampled_from(["pkt", "pkt", "pkt", "frag", "icmp"]))
            fwd = draw(st.booleans())
            a, b, pa, pb = (client, server, sport, dport) if fwd else (server, client, dport, sport)
            if kind == "pkt" and proto == 6:
                flags = draw(st.sampled_from([SYN, SA, ACK, ACK, PA, PA, FA, RA]))
                items.append(("pkt", tcp(a, b, pa, pb, flags, next(ipid))))
            elif kind == "pkt":
                items.append(("pkt", udp(a, b, pa, pb, next(ipid))))
            elif kind == "frag":
                items += [("pkt", f) for f in fragments(a, b, proto, pa, pb, next(ipid))]
            else:
                items.append(("pkt", icmp_error(b, a, a, b, proto, pa, pb, ipid=next(ipid))))
    items += [("idle", draw(st.sampled_from([0.5, 3.0, 12.0, 40.0])))
              for _ in range(draw(st.integers(0, 4)))]
    items += [("view", draw(st.sampled_from(["add", "fail", "drain"])))
              for _ in range(draw(st.integers(0, 2)))]
    return draw(st.permutations(items))


TIMEOUTS = CtTimeouts(tcp_established=10, tcp_fin_wait=5, tcp_close_wait=5, tcp_last_ack=3,
                      tcp_time_wait=3, tcp_close=2, udp=4, udp_stream=4, tcp_syn_sent=5,
                      tcp_syn_recv=5, icmp=4, generic=6)


@pytest.mark.parametrize("mode", ["chain", "local", "maglev", "hash"])
@settings(max_examples=60, deadline=None)
@given(items=events(), after=st.sampled_from([1, FAST_AFTER]))
def test_a_node_with_the_fast_path_forwards_and_tracks_as_one_without(mode, items, after):
    nfs = ["nf1", "nf2", "nf3"]
    fast = datapath(mode, nfs=nfs, fastpath=True, fast_after=after, timeouts=TIMEOUTS)
    slow = datapath(mode, nfs=nfs, timeouts=TIMEOUTS)
    xdp = Xdp()
    now, epoch, states = 0.0, 1, {n: "active" for n in nfs}
    for kind, item in items:
        if kind == "idle":
            now += item
            assert sorted(map(repr, xdp.apply(fast.housekeeping(now), fast, now))) == \
                sorted(map(repr, slow.housekeeping(now)))
        elif kind == "view":
            epoch += 1
            if item == "add":
                states["nf4"] = "active"
            else:
                live = [n for n, s in states.items() if s == "active"]
                if len(live) > 1:
                    states[live[0]] = "failed" if item == "fail" else "draining"
            v = view(epoch, list(states.items()), mode)
            assert xdp.apply(fast.view(v, now), fast, now) == slow.view(v, now)
        else:
            now += 0.01
            expect = slow.packet(item, now)
            out = xdp.forward(item, now)
            if out is not None:
                assert expect == [out], "the kernel forwarded what the agent would not"
            else:
                assert xdp.apply(fast.packet(item, now), fast, now) == expect
        check_rule(fast, xdp)
        assert {k: (c.state, c.nf) for k, c in fast.conns.items()} == \
            {k: (c.state, c.nf) for k, c in slow.conns.items()}


# ------------------------------------------------------------------ one behaviour at a time

def _open(dp: Datapath, xdp: Xdp, t: float, sport: int) -> bytes:
    key = flow_key(C1, S1, 6, sport, 80)
    for i, (src, dst, sp, dp_, flags) in enumerate(((C1, S1, sport, 80, SYN),
                                                     (S1, C1, 80, sport, SA),
                                                     (C1, S1, sport, 80, ACK))):
        xdp.apply(dp.packet(tcp(src, dst, sp, dp_, flags, i + 1), t + i * 0.001))
    return key


def test_an_established_connection_enters_the_map_and_both_fins_or_a_reset_end_it():
    dp, xdp = datapath("chain", fastpath=True, fast_after=1), Xdp()
    key = flow_key(C1, S1, 6, 40000, 80)
    xdp.apply(dp.packet(tcp(C1, S1, 40000, 80, SYN), 0.0))
    xdp.apply(dp.packet(tcp(S1, C1, 80, 40000, SA), 0.001))
    assert key not in xdp.map                      # the handshake's ACK must reach the tracker
    _open(dp, xdp, 0.0, 40000)
    assert xdp.map[key] == dp.nf_mac[dp.conns[key].nf] + dp.mac
    out = xdp.forward(tcp(C1, S1, 40000, 80, PA, 9, b"data"), 0.01)
    assert out is not None and out[6:12] == dp.mac
    xdp.apply(dp.packet(tcp(C1, S1, 40000, 80, FA, 10), 0.02))
    assert key in xdp.map                          # half closed: the other side still sends
    xdp.apply(dp.packet(tcp(S1, C1, 80, 40000, FA, 11), 0.03))
    assert key not in xdp.map and dp.counts["fast_del"] == 1
    key2 = _open(dp, xdp, 1.0, 40001)
    assert key2 in xdp.map
    xdp.apply(dp.packet(tcp(S1, C1, 80, 40001, RA, 12), 1.1))
    assert key2 not in xdp.map


def test_a_connection_enters_the_map_after_fast_after_packets_and_a_short_one_never():
    dp, xdp = datapath("chain", fastpath=True), Xdp()
    key = _open(dp, xdp, 0.0, 40100)                   # the handshake's ACK: 1
    for i in range(2, FAST_AFTER):
        xdp.apply(dp.packet(tcp(C1, S1, 40100, 80, PA, 10 + i, b"q"), 0.01 * i), dp)
        assert key not in xdp.map
    xdp.apply(dp.packet(tcp(S1, C1, 80, 40100, PA, 20, b"r"), 0.1), dp)
    assert key in xdp.map and dp.counts["fast_put"] == 1
    short = _open(dp, xdp, 1.0, 40101)                 # a request, its response, both FINs
    for flags, src in ((PA, C1), (PA, S1), (FA, C1), (FA, S1)):
        pkt = tcp(C1, S1, 40101, 80, flags, 30) if src == C1 else tcp(S1, C1, 80, 40101, flags, 31)
        xdp.apply(dp.packet(pkt, 1.1), dp)
    assert short not in xdp.map and dp.counts["fast_put"] == 1 and dp.counts["fast_del"] == 0
    half = _open(dp, xdp, 2.0, 40102)                  # half closed before it qualified
    xdp.apply(dp.packet(tcp(C1, S1, 40102, 80, FA, 40), 2.1), dp)
    for i in range(2 * FAST_AFTER):
        xdp.apply(dp.packet(tcp(S1, C1, 80, 40102, PA, 50 + i, b"s"), 2.2), dp)
    assert half not in xdp.map


def test_activity_in_the_map_keeps_an_idle_timeout_from_ending_a_connection():
    t = CtTimeouts(udp=2, udp_stream=2)
    dp, xdp = datapath("chain", fastpath=True, fast_after=1, timeouts=t), Xdp()
    key = flow_key(C1, S1, 17, 5000, 53)
    xdp.apply(dp.packet(udp(C1, S1, 5000, 53), 0.0))
    assert key in xdp.map
    for i in range(1, 40):                         # 10 s of traffic the kernel forwards
        now = i * 0.25
        assert xdp.forward(udp(C1, S1, 5000, 53, i + 1), now) is not None
        if i % 2 == 0:
            xdp.apply(dp.housekeeping(now), dp, now)
    assert key in dp.conns and key in xdp.map and dp.counts["deletes"] == 0
    last = 39 * 0.25
    out = dp.housekeeping(last + 2.9)              # 2.9 s idle: below 2 + LB_MARGIN
    assert out == [FastRead((key,))], "a connection the kernel forwards ends only once read"
    xdp.apply(out, dp, last + 2.9)
    assert key in dp.conns and key in xdp.map
    xdp.apply(dp.housekeeping(last + 3.1), dp, last + 3.1)
    assert key not in dp.conns and key not in xdp.map and dp.counts["deletes"] == 1


def test_a_connection_that_leaves_the_map_keeps_the_kernels_last_packet():
    """Forwarded in the kernel longer than its idle timeout, then out of the map (a view
    remaps it): its idle time counts from the kernel's last packet, not the agent's."""
    t = CtTimeouts(udp=2, udp_stream=2)
    dp, xdp = datapath("maglev", nfs=("nf1", "nf2"), fastpath=True, fast_after=1, timeouts=t), Xdp()
    for sport in range(6000, 7000):
        key = flow_key(C1, S1, 17, sport, 53)
        if maglev(("nf1", "nf2", "nf3"), key) != maglev(("nf1", "nf2"), key):
            break
    xdp.apply(dp.packet(udp(C1, S1, sport, 53), 0.0), dp, 0.0)
    for i in range(1, 21):
        assert xdp.forward(udp(C1, S1, sport, 53, i + 1), i * 0.5) is not None
        xdp.apply(dp.housekeeping(i * 0.5), dp, i * 0.5)
    xdp.apply(dp.view(view(2, ["nf1", "nf2", "nf3"], "maglev"), 10.1), dp, 10.1)
    assert key not in xdp.map
    assert xdp.apply(dp.housekeeping(10.5), dp, 10.5) == [] and key in dp.conns
    assert dp.counts["deletes"] == 0


def test_a_failed_nf_leaves_the_map_and_its_connections_are_decided_again():
    dp, xdp = datapath("chain", nfs=("nf1", "nf2"), fastpath=True, fast_after=1), Xdp()
    keys = [_open(dp, xdp, 0.0, 41000 + i) for i in range(12)]
    on = {k: nf_of(xdp.map[k]) for k in keys}
    assert set(on.values()) == {"nf1", "nf2"}
    xdp.apply(dp.view(view(2, [("nf1", "failed"), "nf2"], "chain"), 1.0))
    assert {k for k in keys if k in xdp.map} == {k for k in keys if on[k] == "nf2"}
    check_rule(dp, xdp)
    moved = next(k for k in keys if on[k] == "nf1")
    sport = int.from_bytes(moved[5:7], "big")
    pkt = tcp(C1, S1, sport, 80, PA, 50, b"x")
    assert xdp.forward(pkt, 1.1) is None           # passed up: the agent decides it again
    out = xdp.apply(dp.packet(pkt, 1.1))
    assert [nf_of(f) for f in out if isinstance(f, bytes)] == ["nf2"]
    assert nf_of(xdp.map[moved]) == "nf2"


def test_maglev_moves_what_a_view_remaps_and_the_map_follows():
    dp, xdp = datapath("maglev", nfs=("nf1", "nf2"), fastpath=True, fast_after=1), Xdp()
    keys = [_open(dp, xdp, 0.0, 42000 + i) for i in range(30)]
    xdp.apply(dp.view(view(2, ["nf1", "nf2", "nf3"], "maglev"), 1.0))
    remapped = {k for k in keys if maglev(("nf1", "nf2", "nf3"), k) != maglev(("nf1", "nf2"), k)}
    assert remapped and set(keys) - set(xdp.map) == remapped
    check_rule(dp, xdp)


def test_a_refused_put_is_tried_again_by_the_next_packet():
    dp, xdp = datapath("local", fastpath=True, fast_after=1), Xdp()
    key = _open(dp, xdp, 0.0, 43000)
    assert key in dp.fast
    dp.fast_refused(key)                           # the kernel's map was full
    del xdp.map[key]
    assert dp.counts["fast_refused"] == 1 and key not in dp.fast
    out = dp.packet(tcp(C1, S1, 43000, 80, PA, 7, b"y"), 0.1)
    assert [a for a in out if isinstance(a, FastPut)] == [FastPut(key, dp.fast[key])]


def test_a_read_the_kernel_refused_ends_nothing():
    t = CtTimeouts(udp=2, udp_stream=2)
    dp, xdp = datapath("chain", fastpath=True, fast_after=1, timeouts=t), Xdp()
    key = flow_key(C1, S1, 17, 5001, 53)
    xdp.apply(dp.packet(udp(C1, S1, 5001, 53), 0.0))
    assert dp.housekeeping(10.0) == [FastRead((key,))]
    assert dp.fast_seen([], 10.0) == [] and key in dp.conns     # not answered: asked again
    assert dp.housekeeping(10.5) == [FastRead((key,))]


def test_without_the_fast_path_nothing_changes():
    dp = datapath("chain")
    out = dp.packet(udp(C1, S1, 5000, 53), 0.0)
    assert not [a for a in out if isinstance(a, (FastPut, FastDel))]
    assert dp.fast is None and dp.fast_seen([(b"x" * 13, 1.0)], 1.0) == []


class FastCluster(Cluster):
    """test_datapath's chain cluster, its nodes with the fast path (one Xdp each)."""

    def __init__(self, **kw):
        self.xdp = {}
        super().__init__(**kw)

    def feed(self, node, actions):
        xdp = self.xdp.setdefault(node, Xdp())
        return super().feed(node, xdp.apply(actions))


def test_a_cached_answer_the_chain_drops_leaves_the_map(monkeypatch):
    monkeypatch.setattr("test_datapath.Datapath",
                        lambda *a, **kw: Datapath(*a, fastpath=True, fast_after=1, **kw))
    cl = FastCluster(nfs=("nf1", "nf2"))
    lb1, lb2 = cl.dps["lb1"], cl.dps["lb2"]
    for sport in range(44000, 49000):
        key = flow_key(C1, S1, 17, sport, 53)
        if cl.head(key) == "lb1":
            break
    cl.packet("lb1", udp(C1, S1, sport, 53))
    cl.settle()
    cl.packet("lb2", udp(S1, C1, 53, sport))
    cl.settle()
    assert key in cl.xdp["lb1"].map and key in cl.xdp["lb2"].map
    # lb2 deletes the entry (its copy went idle): lb1's cached answer goes, so must its map's
    cl.feed("lb2", lb2.node.delete(key, cl.now))
    cl.settle()
    assert key not in lb1.node.cache
    assert key not in cl.xdp["lb1"].map and key not in cl.xdp["lb2"].map
    # lb1's next packet goes through the agent, re-inserts the NF it used, and is fast again
    nf = lb1.conns[key].nf
    pkt = udp(C1, S1, sport, 53, 9)
    assert cl.xdp["lb1"].forward(pkt, cl.now) is None
    cl.packet("lb1", pkt)
    cl.settle()
    assert nf_of(cl.xdp["lb1"].map[key]) == nf


# ------------------------------------------------------------------ the loader's errors

def test_the_loader_says_why_it_cannot_run(tmp_path):
    from agents.fastpath import FastPath, FastPathError
    with pytest.raises(FastPathError, match="not built .*make setup"):
        FastPath.open("lo", obj_path=tmp_path / "missing.o")
    (tmp_path / "x.o").write_bytes(b"")
    with pytest.raises(FastPathError, match="no interface 'nope0'"):
        FastPath.open("nope0", obj_path=tmp_path / "x.o")
    with pytest.raises(ValueError, match="unknown XDP attach mode 'fast'"):
        FastPath.open("lo", "fast")
