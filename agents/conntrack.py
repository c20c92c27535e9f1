"""What a connection is, as the NF's conntrack sees it: timeouts and the LB's TCP tracker.

One set of timeouts (``CtTimeouts``) owns both sides of the testbed: the NFs write it into
their conntrack sysctls (``sysctls``), and the LB nodes keep each connection's entry for at
least as long (``lb_timeout``), so that an LB never forgets a connection its NF still holds.
The defaults are the kernel's. A user who shortens one shortens both.

The LB's tracker (``Conn.tcp``) follows TCP as conntrack does, coarsely: it cannot check
sequence windows, so where it is unsure it picks the state with the longer timeout. Its states:

- ``SYN_SENT``: a SYN and no reply yet (conntrack: SYN_SENT, SYN_SENT2);
- ``SYN_RECV``: the SYN-ACK seen (conntrack: SYN_RECV);
- ``ESTABLISHED``: an ACK after the handshake, or a connection first seen in the middle
  (another LB node tracked its start; the NF holds it established);
- ``FIN_WAIT``: one direction closed (conntrack: FIN_WAIT, CLOSE_WAIT);
- ``CLOSING``: both directions closed (conntrack: LAST_ACK, TIME_WAIT);
- ``CLOSE``: an RST (conntrack: CLOSE; an RST that conntrack finds outside its window, and
  ignores, is taken as valid here too: the tracker cannot tell);
- ``OTHER``: UDP, ICMP and other protocols (one timeout per protocol);
- ``RELATED``: this node saw only packets related to the connection (ICMP errors), never the
  connection itself: it cannot know the connection's state, so it keeps the longest timeout.

A SYN after ``CLOSING`` or ``CLOSE`` reopens the connection (a reused 5-tuple), as conntrack
does from TIME_WAIT: the tracker starts again at ``SYN_SENT``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping

__all__ = ["CtTimeouts", "Conn", "STATES", "ICMP_ERRORS", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
           "CLOSING", "CLOSE", "OTHER", "RELATED", "LB_MARGIN", "parse_timeouts"]

SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSING, CLOSE, OTHER, RELATED = range(8)
STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSING", "CLOSE", "OTHER",
          "RELATED")
LB_MARGIN = 1.0      # seconds an LB node keeps an entry beyond the NF's timeout
# ICMP errors: they quote the header of the packet they are about, and belong to its connection
ICMP_ERRORS = {3: "destination-unreachable", 4: "source-quench", 5: "redirect",
               11: "time-exceeded", 12: "parameter-problem"}

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_SYSCTL = "net.netfilter.nf_conntrack_"


@dataclass(frozen=True)
class CtTimeouts:
    """Conntrack timeouts in seconds (the kernel's defaults), for NFs and LB nodes alike."""
    tcp_syn_sent: int = 120
    tcp_syn_recv: int = 60
    tcp_established: int = 432000
    tcp_fin_wait: int = 120
    tcp_close_wait: int = 60
    tcp_last_ack: int = 30
    tcp_time_wait: int = 120
    tcp_close: int = 10
    udp: int = 30
    udp_stream: int = 120
    icmp: int = 30
    generic: int = 600

    LIMIT = 30 * 24 * 3600

    def __post_init__(self):
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
               if not isinstance(getattr(self, f.name), int)
               or isinstance(getattr(self, f.name), bool)
               or not 1 <= getattr(self, f.name) <= self.LIMIT]
        if bad:
            raise ValueError(f"bad conntrack timeout(s): {', '.join(bad)} "
                             f"(whole seconds, 1..{self.LIMIT})")

    def asdict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "CtTimeouts":
        """From strings or numbers (``{"tcp_established": "600"}``); unknown names are errors."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown conntrack timeout(s): {', '.join(unknown)} "
                             f"(valid: {', '.join(names)})")
        kwargs = {}
        for key, raw in values.items():
            try:
                kwargs[key] = int(raw)
            except (TypeError, ValueError):
                raise ValueError(f"conntrack timeout {key}={raw!r} is not a whole number of "
                                 f"seconds") from None
        return cls(**kwargs)

    def spec(self) -> str:
        """The command-line form that ``parse_timeouts`` reads back."""
        return ",".join(f"{k}={v}" for k, v in self.asdict().items())

    def sysctls(self) -> Dict[str, int]:
        """The NF's conntrack sysctls for these timeouts."""
        out = {}
        for name, value in self.asdict().items():
            proto, _, state = name.partition("_")
            if proto == "udp":
                sysctl = "udp_timeout" + (f"_{state}" if state else "")
            elif proto == "tcp":
                sysctl = f"tcp_timeout_{state}"
            else:
                sysctl = f"{proto}_timeout"
            out[_SYSCTL + sysctl] = value
        return out

    def lb_timeouts(self) -> tuple[float, ...]:
        """Per tracker state (indexed as ``STATES``): how long an LB node keeps an idle
        entry, never shorter than any conntrack state the NF may be in, plus ``LB_MARGIN``."""
        m = LB_MARGIN
        longest = max(self.asdict().values())
        return (max(self.tcp_syn_sent, self.tcp_syn_recv) + m,
                max(self.tcp_syn_recv, self.tcp_established) + m,
                self.tcp_established + m,
                max(self.tcp_fin_wait, self.tcp_close_wait, self.tcp_last_ack,
                    self.tcp_time_wait) + m,
                max(self.tcp_last_ack, self.tcp_time_wait, self.tcp_close) + m,
                self.tcp_close + m,
                0.0,                      # OTHER: per protocol, see ``other_timeout``
                longest + m)

    def lb_timeouts_by_state(self) -> Dict[str, float]:
        """``lb_timeouts`` by state name (OTHER as its UDP / ICMP / other values), for
        params.json and the README."""
        out = {s: t for s, t in zip(STATES, self.lb_timeouts()) if s != "OTHER"}
        out.update(udp=self.other_timeout(17), icmp=self.other_timeout(1),
                   generic=self.other_timeout(0))
        return out

    def other_timeout(self, proto: int) -> float:
        """The LB's idle timeout of a non-TCP connection of IP protocol ``proto``."""
        if proto == 17:
            return max(self.udp, self.udp_stream) + LB_MARGIN
        if proto == 1:
            return self.icmp + LB_MARGIN
        return self.generic + LB_MARGIN


def parse_timeouts(text: str) -> CtTimeouts:
    """``"tcp_established=600,udp=20"`` (as on a command line) -> CtTimeouts."""
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"conntrack timeout {part!r}: expected name=seconds")
        values[key.strip()] = value.strip()
    return CtTimeouts.from_mapping(values)


class Conn:
    """One connection as this LB node tracks it: its state, when it last saw a packet of it,
    and the NF its packets went to (``nf``, '' until decided)."""
    __slots__ = ("state", "seen", "nf", "fins", "fast")

    def __init__(self, state: int, now: float, nf: str = ""):
        self.state = state
        self.seen = now
        self.nf = nf
        self.fins = 0           # bit 1: the key's low endpoint sent a FIN, bit 2: the high one
        self.fast = 0           # packets seen while the fast path could take it (agents.datapath)

    @classmethod
    def first(cls, proto: int, flags: int, low: bool, now: float) -> "Conn":
        """The tracker for a connection whose first packet seen here has these TCP flags."""
        if proto != 6:
            return cls(OTHER, now)
        c = cls(ESTABLISHED, now)         # picked up in the middle unless it starts here
        if flags & (_SYN | _ACK | _RST | _FIN) == _SYN:
            c.state = SYN_SENT
        elif flags & (_SYN | _ACK | _RST | _FIN) == _SYN | _ACK:
            c.state = SYN_RECV            # the SYN went through another node
        else:
            c.tcp(flags, low)
        return c

    def tcp(self, flags: int, low: bool) -> None:
        """A TCP packet with ``flags`` from the key's low (``low``) or high endpoint."""
        state = self.state
        if flags & _RST:
            self.state = CLOSE
        elif flags & _SYN:
            if flags & _ACK:
                # the handshake is under way: a FIN seen before it was one conntrack found
                # invalid (SYN_RECV keeps the entry as long as an established one)
                self.state, self.fins = SYN_RECV, 0
            elif state in (CLOSING, CLOSE):
                self.state, self.fins = SYN_SENT, 0     # a reused 5-tuple: a new connection
        elif flags & _FIN:
            if state == SYN_SENT:
                return          # conntrack finds a FIN before the SYN-ACK invalid: no change
            self.fins |= 1 if low else 2
            self.state = CLOSING if self.fins == 3 else FIN_WAIT
        elif state in (SYN_SENT, SYN_RECV) and flags & _ACK:
            self.state = ESTABLISHED

    def timeout(self, lb_timeouts: tuple[float, ...], other: float) -> float:
        return other if self.state == OTHER else lb_timeouts[self.state]
