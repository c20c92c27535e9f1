"""The LB agent's shell around the packet logic: the order the actions leave in and where the
agent hands its CPU to the switch (``Agent.apply``), and which socket its loop reads first
(``Agent.run``)."""
from __future__ import annotations

import gc
import os
import socket

import pytest

from agents import lb
from agents.chain import Send
from agents.messages import Ack, Answer, Frame, Gone
from agents.paths import ClusterPaths

KEY = bytes(13)


def frame(body) -> Frame:
    return Frame("lb3", 1, 1, 1, 1, 0, body)


@pytest.fixture
def agent(monkeypatch):
    """An agent without sockets: what it sends and when it yields, in one list."""
    events = []
    a = object.__new__(lb.Agent)
    a.trace, a.secret, a.paths = None, b"s" * 32, ClusterPaths()
    a.counts = {"via_gateway": 0}
    a.lb_via_gw = {peer: ("sock", b"\x02" * 6, b"\x04" * 6) for peer in ("lb1", "lb2")}
    a.lb_via_cluster = {}
    a.tx = lambda frame, data=True, sock=None: events.append("packet" if data else "chain")
    monkeypatch.setattr(os, "sched_yield", lambda: events.append("yield"))
    a.events = events
    return a


def test_the_tail_yields_once_after_the_first_packet_when_chain_frames_follow(agent):
    agent.apply([Send("lb1", frame(Answer(KEY, 1, "nf1", True, 1))), b"syn",
                 Send("lb2", frame(Ack(KEY, 1, "nf1"))), Send("lb1", frame(Gone(KEY, 1)))])
    assert agent.events == ["chain", "packet", "yield", "chain", "chain"]


@pytest.mark.parametrize("actions, events", [
    ([b"p1", b"p2", b"p3"], ["packet"] * 3),                 # held packets released: no yield
    ([b"p1", b"p2", Send("lb2", frame(Gone(KEY, 1)))], ["packet", "packet", "yield", "chain"]),
    ((b"p1",), ["packet"]),                                   # nothing follows: the loop blocks
    ([Send("lb2", frame(None)), b"p1"], ["chain", "packet"]),
    ([], []),
])
def test_no_yield_where_nothing_but_packets_follow(agent, actions, events):
    agent.apply(actions)
    assert agent.events == events


class _Stub:
    """The packet logic's timers, with nothing to do."""

    def tick(self, now):
        return []

    def housekeeping(self, now):
        return []


def test_the_cluster_network_is_read_before_the_data_packets(monkeypatch):
    """Both sockets ready at once: the cluster socket's frames (an Answer) are handled before
    the data socket's (the SYN-ACK it decides), which are then sent at once, not held."""
    threshold = gc.get_threshold()
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        a = object.__new__(lb.Agent)
        (a.csock, cpeer), (a.sock, speer), (a.ctl, _) = pairs
        for s in (a.csock, a.sock, a.ctl):
            s.setblocking(False)
        a.dp, a.trace, a.fp, a.running = _Stub(), None, None, True
        a.counts = {"cluster_rx": 0}
        order = []

        def drain(sock, now):
            order.append("cluster" if sock is a.csock else "data")
            sock.recv(100)
            if len(order) == 2:
                a.running = False
            return 1
        for name in ("cluster_tick", "heartbeat", "log_decisions", "write_stats", "serve_control"):
            monkeypatch.setattr(a, name, lambda *args: None, raising=False)
        monkeypatch.setattr(a, "drain", drain, raising=False)
        speer.send(b"syn-ack")               # the data packet first, on the wire
        cpeer.send(b"answer")
        a.run()
        assert order == ["cluster", "data"]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        for pair in pairs:
            for s in pair:
                s.close()
