"""The LB node's packet logic (sans-I/O): what arrives, which connection it belongs to, where
it goes. ``agents.lb`` only moves frames between sockets and this core.

Events in: ``packet`` (an IPv4 frame from the switch), ``chain`` (a chain-protocol frame
from another LB node), ``view`` (the controller's membership view), ``tick`` (engine timers),
``housekeeping`` (connection expiry); time is passed in. Out come lists of actions:

- ``bytes``: an Ethernet frame to send on the data interface (to an NF);
- ``agents.chain.Send``: a chain frame for the LB node it names (the shell routes it);
- ``Decided``: a connection was decided (the shell logs it);
- ``FastPut`` / ``FastDel``: with the in-kernel fast path (``fastpath=True``), a connection
  whose packets the kernel forwards from now on, with these Ethernet addresses, and one it no
  longer forwards (``agents.fastpath`` keeps the BPF map in step; the shell answers a
  ``FastDel`` with ``fast_left``, the last packet the kernel forwarded); ``FastRead``: the
  connections whose last packets in the kernel the shell must read (``fast_seen``).

The fast path holds only connections whose next packet without SYN, FIN or RST this core
would forward unchanged to the same NF without changing its tracking: TCP connections
established or half closed, UDP; decided (chain: cached at this node with the NF its packets
went to; local: in the node's table; maglev and hash: the NF the current view maps them to);
to a usable NF; and it takes each such connection once it has crossed this core
``fast_after`` times established (or UDP), so that short and closing ones stay here.
Whatever may change that (a packet the kernel passed up, a decision, a cached answer changed
or dropped by the engine, a view, an expiry) re-checks the connections it touches. The
kernel passes everything else up (SYN, FIN, RST, fragments, ICMP, options). Their activity
comes back through ``fast_seen`` (the map's last-seen times of the connections that would
end otherwise: ``FastRead``), so idle timeouts hold as if every packet had crossed this core.

What belongs to a connection, as the NF's conntrack sees it:

- **The connection's own packets** (TCP, UDP, ICMP echo and other protocols; key: the
  canonical 5-tuple, ports 0 for protocols without ports). Each is tracked (``Conn``,
  ``agents.conntrack``): TCP through both FINs or an RST, every state with an idle timeout
  never shorter than the NF's for that state (``CtTimeouts.lb_timeouts``). When a
  connection ends here, its entry is deleted (chain) or forgotten (``local``).
- **ICMP errors** (destination unreachable, source quench, redirect, time exceeded, parameter
  problem) go where the connection named by their inner header goes.
- **IP fragments.** The gateway steers every fragment by addresses only, so all fragments of
  a datagram reach one LB node. The first fragment carries the ports: its datagram (source,
  destination, protocol, IP ID) is mapped to the connection, and later fragments follow it.
  A later fragment that arrives before the first is held (up to ``frag_timeout``, as IP
  reassembly waits) and sent after it. What is held too long or beyond the limits is
  counted (``frag_expired``, ``frag_dropped``), never silently lost.

Packets related to a connection (ICMP errors) may reach a node that never saw the
connection itself: it asks the chain without inserting (an ICMP error about a connection the
table does not hold is dropped, ``dropped_no_entry``, as the NF would find it invalid),
tracks the key as ``RELATED`` (the longest timeout) and, when that expires, drops only its
cached answer: it cannot know that the connection ended. A node
whose lookup finds no answer because another node deleted the entry proposes the NF the
connection's packets went to before (if that NF is still usable), so a connection that is
alive here is not moved by a delete elsewhere.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from agents import wire
from agents.chain import VARIANTS, ChainNode, Decision, Forward, Send, View
from agents.conntrack import (CLOSE, CLOSING, ESTABLISHED, FIN_WAIT, ICMP_ERRORS, OTHER, RELATED,
                              STATES, Conn, CtTimeouts)
from agents.keys import flow_key_raw, key_str
from agents.messages import Frame, ViewMsg
from agents.modes import Picker

__all__ = ["Datapath", "Decided", "FastPut", "FastDel", "FastRead", "steering_slots", "IPV4",
           "FAST_STATES"]

IPV4 = b"\x08\x00"
MAX_BUFFERED = 256          # packets held per key while its lookup is pending
FRAG_TIMEOUT = 30.0         # seconds a datagram's fragments are mapped / held (ipfrag_time)
MAX_FRAG_DATAGRAMS = 4096   # datagrams whose later fragments wait for their first
MAX_FRAGS_HELD = 64         # fragments held per datagram
_PORTS = struct.Struct("!HH")
_FAILED = "failed"
# tracker states whose packets without SYN, FIN or RST change nothing in the tracking
FAST_STATES = frozenset((ESTABLISHED, FIN_WAIT, OTHER))
FAST_PROTOS = (6, 17)       # what the XDP program forwards (agents/fastpath.bpf.c)
# packets a connection shows this core while the fast path could take it (established, or
# UDP), before it goes in the map: a short connection (a request and its response) ends
# before, and costs no map update and removal, which cost more than forwarding its few
# packets here; nor does one that is closing (half closed: it stays if it is in the map)
FAST_AFTER = 8


@dataclass(frozen=True)
class Decided:
    """The connection of ``key`` goes to NF ``nf`` (for the decision log)."""
    key: bytes
    nf: str


@dataclass(frozen=True)
class FastPut:
    """The fast path forwards ``key``'s packets, rewriting their Ethernet addresses to
    ``eth`` (12 bytes: the NF's MAC, this node's)."""
    key: bytes
    eth: bytes


@dataclass(frozen=True)
class FastDel:
    """The fast path no longer forwards ``key``'s packets."""
    key: bytes


@dataclass(frozen=True)
class FastRead:
    """The shell reads when the fast path last forwarded a packet of each of ``keys`` and
    answers with ``Datapath.fast_seen``: they would end now, unless the kernel saw them."""
    keys: tuple[bytes, ...]


def steering_slots(lbs) -> tuple[str, ...]:
    """The gateway's bundle slots (see ``View.steering``); () unless every node has one."""
    if not lbs or not all(lb.slot for lb in lbs) or len({lb.slot for lb in lbs}) < len(lbs):
        return ()
    slots = [""] * max(lb.slot for lb in lbs)
    for lb in lbs:
        slots[lb.slot - 1] = lb.name
    return tuple(slots)


class Datapath:
    """One LB node's packet handling in LB mode ``mode`` (see ``agents.modes``)."""

    def __init__(self, name: str, mode: str, mac: bytes,
                 timeouts: CtTimeouts = CtTimeouts(), *, frag_timeout: float = FRAG_TIMEOUT,
                 max_buffered: int = MAX_BUFFERED, incarnation: int = 0,
                 variant: str = VARIANTS[0], fastpath: bool = False,
                 fast_after: int = FAST_AFTER):
        self.name, self.mode, self.mac = name, mode, mac
        self.incarnation = incarnation     # of this process's chain node (ChainNode)
        self.variant = variant             # of the chain protocol (View.variant)
        self.picker = Picker(mode)
        self.timeouts = timeouts
        self._lb_timeouts = timeouts.lb_timeouts()
        self._other = {p: timeouts.other_timeout(p) for p in (1, 17)}
        self._generic = timeouts.other_timeout(0)
        self.frag_timeout = frag_timeout
        self.max_buffered = max_buffered
        self.node: ChainNode | None = None
        # the fast path's map as this core has it (key -> Ethernet addresses), None if off;
        # the keys to check again, and the ones whose cached chain answer changed
        self.fast: dict[bytes, bytes] | None = {} if fastpath else None
        self.fast_after = fast_after
        self._dirty: set[bytes] = set()
        self._cache_changes: set[bytes] | None = set() if fastpath else None
        self.epoch = 0
        self.ready_epoch = 0
        self.nf_mac: dict[str, bytes] = {}       # usable NFs (active or draining)
        self.failed: set[str] = set()
        self.conns: dict[bytes, Conn] = {}
        self.buffered: dict[bytes, list[bytes]] = {}
        self.frags: dict[bytes, tuple[bytes, float]] = {}            # datagram -> (key, time)
        self.frag_held: dict[bytes, tuple[float, list[bytes]]] = {}  # datagram -> later frags
        self.counts = {"rx": 0, "buffered": 0, "dropped_no_nf": 0, "dropped_buffer_full": 0,
                       "dropped_not_member": 0, "dropped_no_entry": 0, "malformed": 0, "deletes": 0, "forgotten": 0,
                       "decisions": 0, "icmp_errors": 0, "fragments": 0, "frag_held": 0,
                       "frag_expired": 0, "frag_dropped": 0, "fast_put": 0, "fast_del": 0,
                       "fast_refused": 0}

    # ------------------------------------------------------------------ packets

    def packet(self, buf: bytes, now: float) -> list:
        """An IPv4 frame the gateway steered here."""
        out = self.forward(buf, now)
        return [out] if type(out) is bytes else out

    def forward(self, buf: bytes, now: float, _first_fragment: bool = False) -> bytes | list:
        """``packet`` for the data path's loop: the common case, one frame to an NF, comes as
        that frame alone (no list to build per packet)."""
        if len(buf) < 34:
            self.counts["malformed"] += 1             # no whole IPv4 header
            return []
        l4 = 14 + ((buf[14] & 0x0F) << 2)
        if l4 < 34 or len(buf) < l4:
            self.counts["malformed"] += 1
            return []
        proto = buf[23]
        if not _first_fragment:
            self.counts["rx"] += 1
            if buf[20] & 0x3F or buf[21]:             # More Fragments, or an offset
                return self._fragment(buf, now, proto, l4)
        if proto == 6:
            if len(buf) < l4 + 14:
                self.counts["malformed"] += 1
                return []
            sport, dport = _PORTS.unpack_from(buf, l4)
            flags = buf[l4 + 13]
        elif proto == 17:
            if len(buf) < l4 + 8:
                self.counts["malformed"] += 1
                return []
            sport, dport = _PORTS.unpack_from(buf, l4)
            flags = 0
        elif proto == 1 and len(buf) > l4 and buf[l4] in ICMP_ERRORS:
            key = self._inner_key(buf, l4)
            if key is None:
                self.counts["malformed"] += 1
                return []
            self.counts["icmp_errors"] += 1
            return self._related(key, buf, now)
        else:
            sport = dport = flags = 0
        src, dst = buf[26:30], buf[30:34]
        key = flow_key_raw(src, dst, proto, sport, dport)
        c = self.conns.get(key)
        if c is None or c.state == RELATED:
            nf = c.nf if c is not None else ""
            c = self.conns[key] = Conn.first(
                proto, flags, src < dst or (src == dst and sport <= dport), now)
            c.nf = nf
        else:
            c.seen = now
            if flags & 0x07 or (proto == 6 and c.state != ESTABLISHED):   # FIN, SYN, RST
                if flags & 0x02 and not flags & 0x10 and c.state in (CLOSING, CLOSE):
                    c.nf = ""          # a reused 5-tuple: a new connection, proposed afresh
                c.tcp(flags, src < dst or (src == dst and sport <= dport))
        node = self.node
        if node is not None:                        # the hot path: a decided connection
            hit = node.cache.get(key)
            if hit is not None and c.nf is hit[1]:
                mac = self.nf_mac.get(c.nf)
                if mac is not None:
                    fast = self.fast
                    if fast is None:
                        return mac + self.mac + buf[12:]
                    # the fast path changes only by a SYN, FIN or RST of a connection in it,
                    # or by the packet that lets one in (``_fast_counts``)
                    if key in fast:
                        if not flags & 0x07:
                            return mac + self.mac + buf[12:]
                    elif c.state not in FAST_STATES or not self._fast_counts(c):
                        return mac + self.mac + buf[12:]
                    change = self._fast_check(key, counted=True)
                    if change is None:
                        return mac + self.mac + buf[12:]
                    return [mac + self.mac + buf[12:], change]
        if self.fast is not None:
            self._dirty.add(key)
        out = self._route(key, c, buf, now)
        if self._dirty:
            out += self._fast_flush()
        return out

    def _related(self, key: bytes, buf: bytes, now: float) -> list:
        """A packet that belongs to connection ``key`` (an ICMP error, a later fragment)."""
        c = self.conns.get(key)
        if c is None:
            c = self.conns[key] = Conn(RELATED, now)
        else:
            c.seen = now
        return self._route(key, c, buf, now)

    def _route(self, key: bytes, c: Conn, buf: bytes, now: float) -> list:
        node = self.node
        if node is not None:
            hit = node.cache.get(key)
            if hit is not None:
                nf = hit[1]
                if c.nf is not nf:
                    c.nf = nf
                mac = self.nf_mac.get(nf)
                if mac is None:
                    self.counts["dropped_no_nf"] += 1
                    return []
                return [mac + self.mac + buf[12:]]
            return self._lookup(key, c, buf, now)
        if self.mode == "chain":
            self.counts["dropped_no_nf"] += 1           # no view yet
            return []
        nf = self.picker.stateless(key)
        mac = self.nf_mac.get(nf) if nf else None
        if mac is None:
            self.counts["dropped_no_nf"] += 1
            return []
        out = [mac + self.mac + buf[12:]]
        if c.nf != nf:                               # a new connection, or a re-mapped one
            c.nf = nf
            self.counts["decisions"] += 1
            out.append(Decided(key, nf))
        return out

    def _lookup(self, key: bytes, c: Conn, buf: bytes, now: float) -> list:
        held = self.buffered.get(key)
        if held is not None:
            if len(held) < self.max_buffered:
                held.append(buf)
                self.counts["buffered"] += 1
            else:
                self.counts["dropped_buffer_full"] += 1
            return []
        if self.node.removed:
            self.counts["dropped_not_member"] += 1      # no lookup can start: not a member
            return []
        # the NF this connection's packets went to, while it is usable: a delete of the entry
        # by another node (whose copy of the connection went idle) must not move it; a packet
        # only related to a connection (an ICMP error) asks without inserting ('')
        if c.state == RELATED:
            proposal = ""
        else:
            proposal = c.nf if c.nf in self.nf_mac else self.picker.propose(key)
        if proposal is None:
            self.counts["dropped_no_nf"] += 1
            return []
        self.buffered[key] = [buf]
        self.counts["buffered"] += 1
        return self._engine(self.node.lookup(key, proposal, now, buf[14:]))

    def _inner_key(self, buf: bytes, l4: int) -> bytes | None:
        """The connection an ICMP error is about, from the header it quotes."""
        inner = l4 + 8
        if len(buf) < inner + 20 or buf[inner] >> 4 != 4:
            return None
        proto = buf[inner + 9]
        ports = inner + ((buf[inner] & 0x0F) << 2)
        if proto in (6, 17) and not (((buf[inner + 6] << 8) | buf[inner + 7]) & 0x1FFF):
            if len(buf) < ports + 4:
                return None
            sport, dport = _PORTS.unpack_from(buf, ports)
        else:
            sport = dport = 0
        return flow_key_raw(buf[inner + 12:inner + 16], buf[inner + 16:inner + 20], proto,
                            sport, dport)

    def _fragment(self, buf: bytes, now: float, proto: int, l4: int) -> list:
        self.counts["fragments"] += 1
        datagram = buf[26:34] + buf[18:20] + buf[23:24]      # addresses, IP ID, protocol
        if buf[20] & 0x1F or buf[21]:                        # a later fragment: no ports
            known = self.frags.get(datagram)
            if known is not None:
                return self._related(known[0], buf, now)
            held = self.frag_held.get(datagram)
            if held is None:
                if len(self.frag_held) >= MAX_FRAG_DATAGRAMS:
                    self.counts["frag_dropped"] += 1
                    return []
                held = self.frag_held[datagram] = (now, [])
            if len(held[1]) >= MAX_FRAGS_HELD:
                self.counts["frag_dropped"] += 1
                return []
            held[1].append(buf)
            self.counts["frag_held"] += 1
            return []
        # the first fragment: the ports (or the ICMP error's inner header) are in it
        out = self.forward(buf, now, True)
        if type(out) is bytes:
            out = [out]
        key = self._key_of(buf, proto, l4)
        if key is None:
            return out
        self.frags[datagram] = (key, now)
        waiting = self.frag_held.pop(datagram, None)
        for frame in waiting[1] if waiting else ():
            out += self._related(key, frame, now)
        return out

    def _key_of(self, buf: bytes, proto: int, l4: int) -> bytes | None:
        """The connection of a first fragment (None if it is too short to tell)."""
        if proto in (6, 17):
            if len(buf) < l4 + 4:
                return None
            sport, dport = _PORTS.unpack_from(buf, l4)
        elif proto == 1 and len(buf) > l4 and buf[l4] in ICMP_ERRORS:
            return self._inner_key(buf, l4)
        else:
            sport = dport = 0
        return flow_key_raw(buf[26:30], buf[30:34], proto, sport, dport)

    # ------------------------------------------------------------------ chain and view

    def chain(self, msg: Frame, now: float) -> list:
        """A chain frame from another LB node."""
        if self.node is None:
            return []
        return self._engine(self.node.receive(msg.src, msg, now))

    def tick(self, now: float) -> list:
        return self._engine(self.node.tick(now)) if self.node is not None else []

    def view(self, view: ViewMsg, now: float) -> list:
        """A view from the controller; ignored unless newer than the current one."""
        if view.epoch <= self.epoch:
            return []
        self.epoch = view.epoch
        self.nf_mac = {nf.name: wire.mac_bytes(nf.mac) for nf in view.nfs
                       if nf.state != _FAILED}
        newly_failed = {nf.name for nf in view.nfs if nf.state == _FAILED} - self.failed
        self.failed |= newly_failed
        self.picker.set_active(nf.name for nf in view.nfs if nf.state == "active")
        for nf in newly_failed:
            for key in [k for k, v in self.picker.local.items() if v == nf]:
                self.picker.forget(key)
        if self.fast:
            self._dirty.update(self.fast)       # NFs failed, other active NFs (maglev, hash)
        if self.mode != "chain":
            return self._fast_flush() if self._dirty else []
        members = tuple(lb.name for lb in view.lbs)
        since = tuple(lb.since for lb in view.lbs)
        chain_view = View(view.epoch, members, view.chain_len, steering_slots(view.lbs),
                          since if all(since) else (), variant=self.variant)
        if self.node is None:
            if self.name not in members:
                return []
            self.node = ChainNode(self.name, chain_view, incarnation=self.incarnation,
                                  cache_changes=self._cache_changes)
            out = self._engine(self.node.tick(now))
            for nf in sorted(self.failed):    # failed before this node's first view: never
                out += self._engine(self.node.purge_nf(nf, now))   # inserted here either
            return out
        out = self._engine(self.node.set_view(chain_view, now))
        if self.node.removed and self.buffered:
            # out of the view: the engine dropped its pending lookups, nothing will answer
            self.counts["dropped_not_member"] += sum(map(len, self.buffered.values()))
            self.buffered.clear()
        for nf in newly_failed:
            out += self._engine(self.node.purge_nf(nf, now))
        if newly_failed:
            # lookups pending with a proposal of a failed NF propose again (see ChainNode.lookup)
            for key in list(self.buffered):
                c = self.conns.get(key)
                proposal = self.picker.propose(key)
                if proposal is not None and (c is None or c.state != RELATED):
                    out += self._engine(self.node.lookup(key, proposal, now))
        if self._dirty:
            out += self._fast_flush()
        return out

    def _engine(self, actions) -> list:
        """The engine's actions as this node's: held packets first, then the rest in order
        (as the tail: the Answer to the asker before the first packet it forwards, as that
        packet's reply comes back to the asker, which must know the decision by then)."""
        frames, rest = [], []
        for a in actions:
            kind = type(a)
            if kind is Send:
                rest.append(a)
            elif kind is Decision and not a.nf:         # asked only, and there is no entry
                self.counts["dropped_no_entry"] += len(self.buffered.pop(a.key, ()))
                c = self.conns.get(a.key)
                if c is not None and c.state == RELATED:
                    del self.conns[a.key]          # nothing to keep for it here
            elif kind is Decision:
                self.counts["decisions"] += 1
                if self.fast is not None:
                    self._dirty.add(a.key)
                held = self.buffered.pop(a.key, ())
                if a.released:                       # the tail sent the first one
                    held = held[1:]
                c = self.conns.get(a.key)
                if c is not None:
                    c.nf = a.nf
                mac = self.nf_mac.get(a.nf)
                if mac is None:
                    self.counts["dropped_no_nf"] += len(held)
                else:
                    frames.extend(mac + self.mac + b[12:] for b in held)
                rest.append(Decided(a.key, a.nf))
            elif kind is Forward:                    # as the tail: an asker's first packet
                mac = self.nf_mac.get(a.nf)
                if mac is None:
                    self.counts["dropped_no_nf"] += 1
                else:
                    rest.append(mac + self.mac + IPV4 + a.packet)
        frames.extend(rest)
        changed = self._cache_changes
        if changed:
            fast = self.fast
            self._dirty.update(k for k in changed if k in fast)
            changed.clear()
        if self._dirty:
            frames += self._fast_flush()
        return frames

    # ------------------------------------------------------------------ the fast path

    def _fast_eth(self, key: bytes) -> bytes | None:
        """The Ethernet addresses the fast path forwards ``key``'s packets with, or None if
        they must come to this core (see the module's docstring)."""
        c = self.conns.get(key)
        if c is None or c.state not in FAST_STATES or key[0] not in FAST_PROTOS \
                or len(key) != 13:
            return None
        node = self.node
        if node is not None:
            hit = node.cache.get(key)
            if hit is None or hit[1] != c.nf:
                return None
        elif self.mode == "chain":
            return None
        elif self.mode == "local":
            if self.picker.local.get(key) != c.nf:
                return None
        elif self.picker.propose(key) != c.nf:
            return None
        mac = self.nf_mac.get(c.nf)
        return None if mac is None else mac + self.mac

    def _fast_counts(self, c: Conn) -> bool:
        """Count a packet of connection ``c``, allowed in the fast path but not in it, toward
        its entry; whether it enters now (never from FIN_WAIT: it is closing)."""
        if c.state == FIN_WAIT:
            return False
        c.fast += 1
        return c.fast >= self.fast_after

    def _fast_check(self, key: bytes, counted: bool = False) -> FastPut | FastDel | None:
        """Bring the fast path in step for ``key``: the change, if any (``counted``: the
        packet that lets it in was counted already)."""
        fast = self.fast
        eth = self._fast_eth(key)
        if eth == fast.get(key):
            return None
        if eth is None:
            del fast[key]
            self.counts["fast_del"] += 1
            return FastDel(key)
        if key not in fast and not counted and not self._fast_counts(self.conns[key]):
            return None
        fast[key] = eth
        self.counts["fast_put"] += 1
        return FastPut(key, eth)

    def _fast_flush(self) -> list:
        """Bring the fast path in step for the keys marked to check."""
        out = [a for a in map(self._fast_check, self._dirty) if a is not None]
        self._dirty.clear()
        return out

    def fast_refused(self, key: bytes) -> None:
        """The kernel did not take ``FastPut(key)`` (its map is full): the key's packets
        keep coming here, and the next one tries again."""
        if self.fast is not None and self.fast.pop(key, None) is not None:
            self.counts["fast_refused"] += 1

    def fast_left(self, key: bytes, seen: float) -> None:
        """The answer to ``FastDel``: when the kernel last forwarded a packet of ``key``
        (0 if never), so that its connection's idle time counts that packet."""
        c = self.conns.get(key)
        if c is not None and seen > c.seen:
            c.seen = seen

    def fast_seen(self, entries, now: float) -> list:
        """The answer to ``FastRead``: ``(key, last seen)`` per key asked, from the fast
        path's map (in this core's clock; 0 if never, or not in the map). The connections
        still idle past their timeout end here; the others live on."""
        fast = self.fast
        if fast is None:
            return []
        out: list = []
        for key, seen in entries:
            c = self.conns.get(key)
            if c is None:
                continue
            if seen > c.seen:
                c.seen = min(seen, now)
            if self._idle_out(key, c, now):
                out += self._expire(key, now)
        if self._dirty:
            out += self._fast_flush()
        return out

    # ------------------------------------------------------------------ timers

    def _idle_out(self, key: bytes, c: Conn, now: float) -> bool:
        """Whether connection ``key`` has been idle past its state's timeout."""
        if c.state != OTHER:
            return now - c.seen >= self._lb_timeouts[c.state]
        return now - c.seen >= self._other.get(key[0], self._generic)

    def housekeeping(self, now: float) -> list:
        """Connections whose idle time passed their state's timeout end here. Those the fast
        path forwards end only once its activity says so: ``FastRead`` asks for it (the shell
        answers with ``fast_seen``)."""
        done = [k for k, c in self.conns.items() if self._idle_out(k, c, now)]
        out: list = []
        fast = self.fast
        if fast:
            ask = tuple(k for k in done if k in fast)
            if ask:
                done = [k for k in done if k not in fast]
                out.append(FastRead(ask))
        for key in done:
            out += self._expire(key, now)
        for datagram in [d for d, (_, t) in self.frags.items() if now - t >= self.frag_timeout]:
            del self.frags[datagram]
        for datagram in [d for d, (t, _) in self.frag_held.items()
                         if now - t >= self.frag_timeout]:
            self.counts["frag_expired"] += len(self.frag_held.pop(datagram)[1])
        if self._dirty:
            out += self._fast_flush()
        return out

    def _expire(self, key: bytes, now: float) -> list:
        c = self.conns.pop(key)
        node = self.node
        if self.fast is not None:
            self._dirty.add(key)
        if c.state == RELATED:
            self.counts["forgotten"] += 1
            if node is not None:
                node.forget(key)
            else:
                self.picker.forget(key)     # local mode: the table's entry is the answer
            return []
        self.counts["deletes"] += 1
        if node is not None:
            if key in node.cache:
                return self._engine(node.delete(key, now))
        else:
            self.picker.forget(key)
        return []

    # ------------------------------------------------------------------ queries

    def heartbeat(self) -> tuple[int, int]:
        """(the newest view epoch this node is ready to serve, the entries it holds)."""
        node = self.node
        if node is None or node.synced:
            self.ready_epoch = self.epoch
        entries = node.live if node is not None else len(self.picker.local)
        return self.ready_epoch, entries

    def states(self) -> dict[str, int]:
        """Tracked connections per tracker state."""
        out = dict.fromkeys(STATES, 0)
        for c in self.conns.values():
            out[STATES[c.state]] += 1
        return out

    def status(self) -> dict:
        node = self.node
        out = {"name": self.name, "mode": self.mode, "epoch": self.epoch,
               "variant": self.variant, "active_nfs": list(self.picker.active),
               "counts": dict(self.counts),
               "pending": len(self.buffered), "connections": len(self.conns),
               "conn_states": self.states(), "timeouts": self.timeouts.asdict(),
               "fast_entries": len(self.fast) if self.fast is not None else None}
        if node is not None:
            out.update(entries=node.live, records=len(node.store), cached=len(node.cache),
                       synced=node.synced, incarnation=node.inc, roles=node.roles(),
                       engine=node.stats,
                       members=list(node.view.members), steering=list(node.view.steering),
                       chain_len=node.view.chain_len)
        else:
            out.update(entries=len(self.picker.local))
        return out

    def table(self, limit: int = 50) -> dict:
        node = self.node
        if node is None:
            rows = [{"key": key_str(k), "nf": nf, "role": "local"}
                    for k, nf in list(self.picker.local.items())[:limit]]
            return {"name": self.name, "entries": len(self.picker.local), "rows": rows,
                    "chains": []}
        rows, chains = [], {}
        for key, rec in node.store.items():
            chain = node.view.chain(key)
            chains[chain] = chains.get(chain, 0) + 1
            if len(rows) < limit:
                c = self.conns.get(key)
                rows.append({"key": key_str(key), "nf": rec.nf or "(deleted)", "ver": rec.ver,
                             "committed": rec.committed, "role": node.role(key),
                             "chain": " > ".join(chain),
                             "state": STATES[c.state] if c is not None else ""})
        return {"name": self.name, "epoch": node.view.epoch, "entries": len(node.store),
                "roles": node.roles(), "rows": rows,
                "chains": [{"chain": " > ".join(c), "keys": n}
                           for c, n in sorted(chains.items(), key=lambda x: -x[1])]}
