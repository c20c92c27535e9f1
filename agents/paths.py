"""Which way an LB node's chain frames go to each peer (sans-I/O: time passed in).

Chain frames take the LB cluster network (``<lb>-eth1``, a kernel bridge) when both nodes
are on it, and the gateway otherwise. A node that loses the cluster network (its interface
down, a cable pulled) while its gateway link stays up keeps every connection if its peers
and it reach each other through the gateway instead: the chain's links are reliable FIFO
channels (``agents.chain``), so frames lost while the path changes are sent again on the
new one, in order.

Every ``HELLO_EVERY`` a node sends each peer on the cluster network a ``Hello`` over that
network (``tick``). A peer none of whose hellos arrived over it for ``LOST_AFTER`` is reached
through the gateway (``via_cluster`` False) until one arrives again (``heard``): both ends of
a broken path notice it on their own, and switch back when it heals. ``Change`` records
each switch, for the agent's log and status.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HELLO_EVERY", "LOST_AFTER", "Change", "ClusterPaths"]

HELLO_EVERY = 0.1    # seconds between hellos to each peer over the cluster network
LOST_AFTER = 0.5     # seconds without one before the peer is reached through the gateway


@dataclass(frozen=True)
class Change:
    """Frames to ``peer`` now go over the cluster network (``cluster``) or the gateway."""
    peer: str
    cluster: bool
    at: float
    silent_s: float = 0.0    # how long its hellos had been missing (lost)


class ClusterPaths:
    def __init__(self, hello_every: float = HELLO_EVERY, lost_after: float = LOST_AFTER):
        if not 0 < hello_every < lost_after:
            raise ValueError(f"need 0 < hello_every < lost_after, got {hello_every}, {lost_after}")
        self.hello_every, self.lost_after = hello_every, lost_after
        self._heard: dict[str, float] = {}      # peer on the cluster network -> last hello
        self._lost: set[str] = set()             # ... reached through the gateway meanwhile
        self._next_hello: float | None = None

    def set_peers(self, peers, now: float) -> None:
        """The peers that are on the cluster network (a new one gets ``lost_after`` to be
        heard from; one no longer listed is forgotten)."""
        peers = set(peers)
        for p in set(self._heard) - peers:
            del self._heard[p]
            self._lost.discard(p)
        for p in peers - set(self._heard):
            self._heard[p] = now

    def via_cluster(self, peer: str) -> bool:
        """Frames to ``peer`` take the cluster network (False: the gateway)."""
        return peer in self._heard and peer not in self._lost

    def lost(self) -> list[str]:
        return sorted(self._lost)

    def heard(self, peer: str, now: float) -> list[Change]:
        """A hello from ``peer`` arrived over the cluster network."""
        if peer not in self._heard:
            return []
        self._heard[peer] = max(self._heard[peer], now)
        if peer in self._lost:
            self._lost.discard(peer)
            return [Change(peer, True, now)]
        return []

    def tick(self, now: float) -> tuple[list[str], list[Change]]:
        """(the peers to send a hello now, the paths that changed)."""
        changes = []
        for p, t in self._heard.items():
            if p not in self._lost and now - t > self.lost_after:
                self._lost.add(p)
                changes.append(Change(p, False, now, round(now - t, 3)))
        hello: list[str] = []
        if self._next_hello is None or now >= self._next_hello:
            self._next_hello = now + self.hello_every
            hello = sorted(self._heard)
        return hello, changes
