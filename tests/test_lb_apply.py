"""The LB agent's shell carrying out the packet logic's actions (``agents.lb.Agent.apply``):
the order they leave in, and where the agent hands its CPU to the switch."""
from __future__ import annotations

import os

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
