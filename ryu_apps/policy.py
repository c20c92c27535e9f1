"""The controller's membership policy as pure logic (no os-ken, no clock, no I/O).

``Policy`` owns the membership view: epoch, chain length, LB mode, the LB members and
the NF pool. Every method takes the current time ``now`` (seconds, any monotonic
origin) where time matters and returns a list of actions for the switch application
(``ryu_apps.gateway``) to carry out, in order. Bad input raises ``PolicyError`` (or its
subclass ``UnknownName``) with a message meant for the user; the state is then unchanged.

LB members have a status: ``joining`` from admission until the agent heartbeats an
epoch at least the one it was admitted in (it holds the view), then ``up``. Only ``up``
members are steered to. Each member holds a slot in the gateway's steering list from its
admission until it leaves (the first free slot, else a new one at the end); a slot whose
member is not up lists ``EMPTY_SLOT_PORT``, a port the switch does not have, which the
``bundle`` action skips, so the other members keep their places and the gateway moves only
the connections of a member that leaves or comes up. A member whose heartbeats stop for
``heartbeat_timeout`` (or that never comes up within ``join_timeout``) is removed from
steering and from the view; the last member is never removed that way, and nobody while
the switch is away (heartbeats cross it: ``switch_lost`` until ``start``). Every membership change bumps the epoch and
pushes the new view to every member; the view is also re-pushed every
``repush_interval`` and to any agent that heartbeats an older epoch.

NF health: while the switch is connected (from ``start`` until ``switch_lost``), every
``probe_interval`` each NF that is not failed gets a probe that crosses it
(``SendProbe``, ``ryu_apps.probe``); ``probe_reply`` records the send time of the newest
probe it returned. An NF none of whose probes sent in the last ``nf_detect_timeout``
returned is marked failed, as ``remove_nf`` does, and the view says so (agents purge its
entries); one that never returned a probe yet (its service may still be starting) has
``join_timeout`` instead, as a joining LB node has. The window of an NF starts when probing does (its admission, the switch's
connection, or the end of a stall of this process: ticks ``STALL`` apart or more restart
every window, since the replies of that time may still be queued); ``nf_detect_timeout`` 0
turns detection off.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from agents.messages import LBInfo, NFInfo, ViewMsg

MODES = ("chain", "maglev", "local", "hash")
NF_STATES = ("active", "draining", "failed")
CONTROLLER_MAC = "02:00:00:00:ff:01"
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_PORT = 0xFFFFFF00  # OpenFlow 1.3 OFPP_MAX
# seconds between probes of an NF: 20 per detection window, so that a switch whose receive
# queue on the NF's port overflows (a quarter to 40 % of the probes lost, in bursts, under
# unpaced TCP: measured) does not fail a live NF, as 5 per window did
PROBE_INTERVAL = 0.025
NF_DETECT_TIMEOUT = 0.5  # seconds without a returned probe before an NF is failed
STALL = 0.3              # ticks this far apart: this process stalled, probe windows restart
EMPTY_SLOT_PORT = 0xFEFF  # a steering slot with no member up (no LB may use this port)


def take_slot(slots: list[str], name: str) -> None:
    """Give ``name`` a steering slot: the first free one ('') in ``slots``, else a new one."""
    if "" in slots:
        slots[slots.index("")] = name
    else:
        slots.append(name)


class PolicyError(ValueError):
    """A request the policy refuses (bad input); the message says why."""


class UnknownName(PolicyError):
    """A request names an LB or NF that is not a member."""


# --- actions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where to deliver a view: an LB agent's name, MAC and switch port."""
    name: str
    mac: str
    port: int


@dataclass(frozen=True)
class AddHostRoute:
    """Deliver frames with destination ``mac`` to switch port ``port``."""
    mac: str
    port: int


@dataclass(frozen=True)
class DelHostRoute:
    """Stop delivering frames to ``mac``."""
    mac: str


@dataclass(frozen=True)
class SetSteering:
    """Spread IPv4 arriving on ``edge_ports`` per connection over ``lb_ports`` (empty: drop;
    ``EMPTY_SLOT_PORT`` holds a slot no member is steered to)."""
    edge_ports: tuple[int, ...]
    lb_ports: tuple[int, ...]


@dataclass(frozen=True)
class PushView:
    """Send ``view`` to each target."""
    targets: tuple[Target, ...]
    view: ViewMsg

    @property
    def lb_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)


@dataclass(frozen=True)
class SendProbe:
    """Send health probe ``seq`` through NF ``nf`` (MAC ``mac``, switch port ``port``)."""
    nf: str
    mac: str
    port: int
    seq: int


@dataclass(frozen=True)
class Note:
    """Something worth logging (a timeout, a refused heartbeat, ...)."""
    text: str


Action = Union[AddHostRoute, DelHostRoute, SetSteering, PushView, SendProbe, Note]


# --- members ---------------------------------------------------------------------------

@dataclass
class LBMember:
    name: str
    mac: str
    port: int
    admitted_epoch: int
    admitted_at: float
    cluster_mac: str = ""    # its interface on the LB cluster network, if it has one
    status: str = "joining"  # "joining" | "up"
    last_heartbeat: float | None = None
    reported_epoch: int | None = None
    entries: int = 0


@dataclass
class NFMember:
    name: str
    mac: str
    port: int
    state: str = "active"
    probe_from: float | None = None   # start of its probe window (None: not probing)
    last_ok: float | None = None      # send time of the newest probe it returned
    failed_at: float | None = None
    detected: bool = False            # failed by its probes (not told: remove_nf)
    seen: bool = False                # it returned a probe once (restored: it had)
    probes_sent: int = 0
    probes_back: int = 0              # returned, late ones (after it failed) too
    probe_rtt_max: float = 0.0        # seconds, the slowest probe that returned


@dataclass(frozen=True)
class Edge:
    """A client or server host attached to the switch."""
    name: str
    mac: str
    port: int


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PolicyError(f"bad {what} name {name!r}: use a letter then up to 31 of "
                          "letters, digits, '_', '.', '-' (e.g. lb5, nf4)")
    return name


def check_mac(mac: object) -> str:
    if not isinstance(mac, str) or not _MAC_RE.match(mac.lower()):
        raise PolicyError(f"bad MAC {mac!r}: expected six hex bytes like 02:00:00:00:04:01")
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        raise PolicyError(f"bad MAC {mac}: a multicast address cannot be a host")
    if mac == "00:00:00:00:00:00" or mac == CONTROLLER_MAC:
        raise PolicyError(f"bad MAC {mac}: reserved")
    return mac


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port < MAX_PORT:
        raise PolicyError(f"bad switch port {port!r}: expected an integer from 1 to {MAX_PORT - 1}")
    if port == EMPTY_SLOT_PORT:
        raise PolicyError(f"switch port {port} is reserved (it marks an empty steering slot)")
    return port


# --- the policy ------------------------------------------------------------------------

@dataclass
class Policy:
    """Membership view and the rules that change it. See the module docstring."""
    chain_len: int
    mode: str = "chain"
    heartbeat_timeout: float = 0.5
    join_timeout: float = 20.0
    repush_interval: float = 1.0
    probe_interval: float = PROBE_INTERVAL
    nf_detect_timeout: float = NF_DETECT_TIMEOUT
    epoch: int = 1
    edges: dict[str, Edge] = field(default_factory=dict)
    lbs: dict[str, LBMember] = field(default_factory=dict)
    nfs: dict[str, NFMember] = field(default_factory=dict)
    _last_push: float | None = field(default=None, init=False, repr=False)
    _steering: tuple[int, ...] | None = field(default=None, init=False, repr=False)
    _slots: list[str] = field(default_factory=list, init=False, repr=False)  # '' = free
    _switch_up: bool = field(default=False, init=False, repr=False)
    _probe_seq: int = field(default=0, init=False, repr=False)
    _probes: dict[int, tuple[str, float]] = field(default_factory=dict, init=False, repr=False)
    _last_probe: float | None = field(default=None, init=False, repr=False)
    _last_tick: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.chain_len, bool) or not isinstance(self.chain_len, int) or self.chain_len < 1:
            raise PolicyError(f"bad chain_len {self.chain_len!r}: expected an integer >= 1")
        if self.mode not in MODES:
            raise PolicyError(f"bad mode {self.mode!r}: expected one of {', '.join(MODES)}")
        for what, value in (("heartbeat_timeout", self.heartbeat_timeout),
                            ("join_timeout", self.join_timeout),
                            ("repush_interval", self.repush_interval),
                            ("probe_interval", self.probe_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise PolicyError(f"bad {what} {value!r}: expected a positive number of seconds")
        if isinstance(self.nf_detect_timeout, bool) or \
                not isinstance(self.nf_detect_timeout, (int, float)) or \
                not (self.nf_detect_timeout == 0
                     or self.nf_detect_timeout >= 2 * self.probe_interval):
            raise PolicyError(f"bad nf_detect_timeout {self.nf_detect_timeout!r}: expected 0 "
                              f"(off) or at least two probe intervals "
                              f"({2 * self.probe_interval:g} s)")

    # -- set-up (no epoch bump: this is the initial view) --

    @classmethod
    def from_config(cls, cfg: dict, now: float) -> "Policy":
        """Build from the gateway's config dict (see ``ryu_apps.gateway``)."""
        kwargs = tunables_of(cfg)
        pol = cls(chain_len=cfg["chain_len"], mode=cfg.get("mode", "chain"), **kwargs)
        edges = cfg.get("edge_ports", {})
        if not isinstance(edges, dict):
            raise PolicyError("'edge_ports' must be an object {name: {mac, port}}")
        for name, e in edges.items():
            mac, port = _mac_port(e, f"edge_ports.{name}")
            pol.add_edge(name, mac, port)
        for key, adder in (("lbs", pol._admit_lb), ("nfs", pol._admit_nf)):
            items = cfg.get(key, [])
            if not isinstance(items, list):
                raise PolicyError(f"'{key}' must be a list of {{name, mac, port}}")
            for i, item in enumerate(items):
                if not isinstance(item, dict) or "name" not in item:
                    raise PolicyError(f"{key}[{i}] must be an object with name, mac, port")
                mac, port = _mac_port(item, f"{key}[{i}]")
                if key == "lbs":
                    adder(item["name"], mac, port, now, item.get("cluster_mac", ""))
                else:
                    adder(item["name"], mac, port, now)
        if not pol.lbs:
            raise PolicyError("config lists no LB nodes ('lbs'): at least one is needed")
        return pol

    SNAPSHOT_VERSION = 1

    def snapshot(self) -> dict:
        """The durable state, JSON-ready: what a restarted controller resumes from
        (``restore``). Heartbeat times, reported epochs and probe times are not in it: they
        are measured anew."""
        return {
            "version": self.SNAPSHOT_VERSION, "epoch": self.epoch, "chain_len": self.chain_len,
            "mode": self.mode, "slots": list(self._slots),
            "edges": [{"name": e.name, "mac": e.mac, "port": e.port} for e in self.edges.values()],
            "lbs": [{"name": m.name, "mac": m.mac, "port": m.port, "cluster_mac": m.cluster_mac,
                     "admitted_epoch": m.admitted_epoch, "status": m.status}
                    for m in self.lbs.values()],
            "nfs": [{"name": n.name, "mac": n.mac, "port": n.port, "state": n.state,
                     "detected": n.detected, "seen": n.seen} for n in self.nfs.values()],
        }

    @classmethod
    def restore(cls, snap: object, now: float, **tunables) -> "Policy":
        """A policy resuming from ``snapshot()``'s output at an epoch above it (every view
        pushed before had at most its epoch, so agents take the next one). Members that were
        up stay up (their heartbeat clocks start now: they have ``heartbeat_timeout`` to be
        heard), so the steering stays as it was. PolicyError if ``snap`` is not a snapshot."""
        try:
            if not isinstance(snap, dict) or snap.get("version") != cls.SNAPSHOT_VERSION:
                raise PolicyError(f"not a version {cls.SNAPSHOT_VERSION} policy snapshot")
            pol = cls(chain_len=snap["chain_len"], mode=snap["mode"], **tunables)
            epoch = snap["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise PolicyError(f"bad epoch {epoch!r}")
            for e in snap["edges"]:
                pol.add_edge(e["name"], e["mac"], e["port"])
            for m in snap["lbs"]:
                pol._admit_lb(m["name"], m["mac"], m["port"], now, m.get("cluster_mac", ""))
                lb = pol.lbs[m["name"]]
                lb.admitted_epoch = m["admitted_epoch"]
                if m["status"] not in ("joining", "up"):
                    raise PolicyError(f"bad status {m['status']!r} of {m['name']}")
                lb.status = m["status"]
                if lb.status == "up":
                    lb.last_heartbeat = now
            for n in snap["nfs"]:
                pol._admit_nf(n["name"], n["mac"], n["port"], now)
                if n["state"] not in NF_STATES:
                    raise PolicyError(f"bad state {n['state']!r} of {n['name']}")
                pol.nfs[n["name"]].state = n["state"]
                pol.nfs[n["name"]].detected = bool(n.get("detected"))
                pol.nfs[n["name"]].seen = bool(n.get("seen"))
            slots = snap["slots"]
            if sorted(s for s in slots if s) != sorted(pol.lbs):
                raise PolicyError(f"slots {slots} are not those of the LB nodes {list(pol.lbs)}")
            pol._slots = list(slots)
            if not pol.lbs:
                raise PolicyError("no LB nodes")
        except (KeyError, TypeError, AttributeError) as e:
            raise PolicyError(f"malformed policy snapshot: {type(e).__name__} {e}") from None
        pol.epoch = epoch + 1
        return pol

    def add_edge(self, name: str, mac: str, port: int) -> None:
        """Register a client/server host (before ``start``)."""
        check_name(name, "edge host")
        mac, port = check_mac(mac), check_port(port)
        self._check_free(name, mac, port)
        self.edges[name] = Edge(name, mac, port)

    def start(self, now: float) -> list[Action]:
        """Every action that installs the current state (at start, on switch reconnect)."""
        acts: list[Action] = [AddHostRoute(m.mac, m.port) for m in self._all_hosts()]
        self._steering = None
        acts += self._steering_actions()
        acts.append(self._push_all(now))
        self._switch_up = True
        self._restart_probe_windows(now)
        for m in self.lbs.values():
            if m.status == "up":
                m.last_heartbeat = now    # not heard while the switch was away: not silent
        return acts

    def switch_lost(self) -> None:
        """The switch disconnected: no heartbeat or probe crosses it, so nobody is judged
        silent until ``start``."""
        self._switch_up = False

    # -- NF pool --

    def add_nf(self, name: str, mac: str, port: int, now: float) -> list[Action]:
        self._admit_nf(name, mac, port, now)
        self.epoch += 1
        return [AddHostRoute(self.nfs[name].mac, port), self._push_all(now)]

    def drain_nf(self, name: str, now: float) -> list[Action]:
        nf = self._nf(name)
        if nf.state != "active":
            raise PolicyError(f"cannot drain {name}: it is {nf.state}, only an active NF can be drained")
        nf.state = "draining"
        self.epoch += 1
        return [self._push_all(now)]

    def remove_nf(self, name: str, now: float) -> list[Action]:
        """Mark failed: it stays listed so that agents purge the entries that name it."""
        nf = self._nf(name)
        if nf.state == "failed":
            raise PolicyError(f"cannot remove {name}: it is already removed (failed)")
        nf.state = "failed"
        nf.failed_at = now
        self.epoch += 1
        return [self._push_all(now)]

    def probe_reply(self, nf: str, seq: int, port: int, now: float) -> list[Action]:
        """Probe ``seq`` came back from switch port ``port``: it crossed NF ``nf``."""
        sent = self._probes.get(seq)
        m = self.nfs.get(nf)
        if sent is None or sent[0] != nf or m is None or m.port != port:
            return []                   # not a probe of ours (or of another NF, or too old)
        m.probes_back += 1
        m.probe_rtt_max = max(m.probe_rtt_max, now - sent[1])
        if m.last_ok is None or sent[1] > m.last_ok:
            m.last_ok = sent[1]
        m.seen = True
        return []

    def _probe_tick(self, now: float) -> list[Action]:
        """Probes due now, and the NFs whose probes stopped returning."""
        if not self._switch_up or not self.nf_detect_timeout:
            return []
        stalled = self._last_tick is not None and now - self._last_tick >= STALL
        self._last_tick = now
        if stalled:
            self._restart_probe_windows(now)
        acts: list[Action] = []
        for m in self.nfs.values():
            if m.state == "failed" or m.probe_from is None:
                continue
            since = max(m.probe_from, m.last_ok if m.last_ok is not None else m.probe_from)
            limit = self.nf_detect_timeout if m.seen else self.join_timeout
            if now - since > limit:
                m.state, m.failed_at, m.detected = "failed", now, True
                self.epoch += 1
                acts += [Note(f"{m.name} failed: none of its probes sent in the last "
                              f"{now - since:.3f} s came back (limit {limit} s"
                              + ("" if m.seen else ", never answered") + ")"),
                         self._push_all(now)]
        if self._last_probe is None or now - self._last_probe >= self.probe_interval * 0.9:
            self._last_probe = now
            horizon = now - 2 * self.nf_detect_timeout
            for seq in [s for s, (_, t) in self._probes.items() if t < horizon]:
                del self._probes[seq]
            for m in self.nfs.values():
                if m.state != "failed":
                    self._probe_seq += 1
                    self._probes[self._probe_seq] = (m.name, now)
                    m.probes_sent += 1
                    acts.append(SendProbe(m.name, m.mac, m.port, self._probe_seq))
        return acts

    def _restart_probe_windows(self, now: float) -> None:
        for m in self.nfs.values():
            m.probe_from = now

    # -- LB members --

    def add_lb(self, name: str, mac: str, port: int, now: float,
               cluster_mac: str = "") -> list[Action]:
        self.epoch += 1
        try:
            self._admit_lb(name, mac, port, now, cluster_mac)
        except PolicyError:
            self.epoch -= 1
            raise
        return [AddHostRoute(self.lbs[name].mac, port), self._push_all(now)]

    def remove_lb(self, name: str, now: float) -> list[Action]:
        lb = self._lb(name)
        if len(self.lbs) == 1:
            raise PolicyError(f"cannot remove {name}: it is the last LB node")
        return self._drop_lb(lb, now, tell_it=True)

    def heartbeat(self, lb: str, epoch: int, entries: int, now: float) -> list[Action]:
        """An agent's heartbeat: it is alive, at ``epoch``, holding ``entries`` entries."""
        m = self.lbs.get(lb)
        if m is None:
            raise UnknownName(f"heartbeat from {lb!r}, which is not an LB member")
        m.last_heartbeat = now
        m.reported_epoch = epoch
        m.entries = entries
        acts: list[Action] = []
        if m.status == "joining" and epoch >= m.admitted_epoch:
            m.status = "up"
            acts += [Note(f"{lb} is up at epoch {epoch}")] + self._steering_actions()
        if epoch < self.epoch:
            acts.append(PushView((self._target(m),), self.view()))
        return acts

    def tick(self, now: float) -> list[Action]:
        """Time passes: time out silent LB members, re-push the view periodically."""
        acts: list[Action] = []
        for m in list(self.lbs.values()) if self._switch_up else ():
            if m.status == "up":
                silent, limit = now - (m.last_heartbeat or m.admitted_at), self.heartbeat_timeout
            else:
                silent, limit = now - m.admitted_at, self.join_timeout
            if silent <= limit:
                continue
            if len(self.lbs) == 1:
                continue  # never empty the view; the member stays as it is
            acts.append(Note(f"{m.name} removed: no heartbeat for {silent:.3f} s "
                             f"({m.status}, limit {limit} s)"))
            acts += self._drop_lb(m, now, tell_it=False)
        acts += self._probe_tick(now)
        if self._last_push is None or now - self._last_push >= self.repush_interval:
            acts.append(self._push_all(now))
        return acts

    # -- reading --

    def view(self) -> ViewMsg:
        return ViewMsg(
            epoch=self.epoch, chain_len=self.chain_len, mode=self.mode,
            lbs=tuple(LBInfo(m.name, m.mac, m.cluster_mac, m.port, self._slots.index(m.name) + 1,
                             m.admitted_epoch)
                      for m in self.lbs.values()),
            nfs=tuple(NFInfo(n.name, n.mac, n.state) for n in self.nfs.values()))

    def steering_ports(self) -> tuple[int, ...]:
        """The gateway's steering list: per slot, its member's port if it is up, else
        ``EMPTY_SLOT_PORT``; () when no member is up."""
        ports = [self.lbs[n].port if n and self.lbs[n].status == "up" else EMPTY_SLOT_PORT
                 for n in self._slots]
        while ports and ports[-1] == EMPTY_SLOT_PORT:
            ports.pop()
        return tuple(ports)

    def state(self, now: float) -> dict:
        """Everything, as JSON-ready data (the REST API's GET /view)."""
        def age(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)
        return {
            "epoch": self.epoch, "chain_len": self.chain_len, "mode": self.mode,
            "heartbeat_timeout": self.heartbeat_timeout, "join_timeout": self.join_timeout,
            "steering": [None if p == EMPTY_SLOT_PORT else p for p in self.steering_ports()],
            "lbs": [{"name": m.name, "mac": m.mac, "cluster_mac": m.cluster_mac,
                     "port": m.port, "status": m.status,
                     "admitted_epoch": m.admitted_epoch, "reported_epoch": m.reported_epoch,
                     "entries": m.entries, "last_heartbeat_age": age(m.last_heartbeat)}
                    for m in self.lbs.values()],
            "nfs": [{"name": n.name, "mac": n.mac, "port": n.port, "state": n.state,
                     "failed_age": age(n.failed_at), "detected": n.detected,
                     "last_probe_ok_age": age(n.last_ok), "probes_sent": n.probes_sent,
                     "probes_back": n.probes_back,
                     "probe_rtt_max_ms": round(n.probe_rtt_max * 1e3, 3)}
                    for n in self.nfs.values()],
            "probe_interval": self.probe_interval, "nf_detect_timeout": self.nf_detect_timeout,
            "edges": [{"name": e.name, "mac": e.mac, "port": e.port} for e in self.edges.values()],
        }

    # -- internals --

    def _admit_lb(self, name: str, mac: str, port: int, now: float,
                  cluster_mac: str = "") -> None:
        check_name(name, "LB")
        mac, port = check_mac(mac), check_port(port)
        if cluster_mac != "":
            cluster_mac = check_mac(cluster_mac)
            if cluster_mac == mac or any(cluster_mac in (m.mac, m.cluster_mac)
                                         for m in self.lbs.values()):
                raise PolicyError(f"cluster MAC {cluster_mac} is already in use")
        self._check_free(name, mac, port)
        self.lbs[name] = LBMember(name, mac, port, admitted_epoch=self.epoch, admitted_at=now,
                                  cluster_mac=cluster_mac)
        take_slot(self._slots, name)

    def _admit_nf(self, name: str, mac: str, port: int, now: float) -> None:
        check_name(name, "NF")
        mac, port = check_mac(mac), check_port(port)
        self._check_free(name, mac, port)
        self.nfs[name] = NFMember(name, mac, port, probe_from=now if self._switch_up else None)

    def _drop_lb(self, m: LBMember, now: float, tell_it: bool) -> list[Action]:
        del self.lbs[m.name]
        self._slots[self._slots.index(m.name)] = ""
        self.epoch += 1
        acts: list[Action] = self._steering_actions()
        push = self._push_all(now)
        if tell_it:  # a live node learns that it left
            push = PushView(push.targets + (self._target(m),), push.view)
        return acts + [push, DelHostRoute(m.mac)]

    def _steering_actions(self) -> list[Action]:
        ports = self.steering_ports()
        if ports == self._steering:
            return []
        self._steering = ports
        edge_ports = tuple(sorted(e.port for e in self.edges.values()))
        return [SetSteering(edge_ports, ports)]

    def _push_all(self, now: float) -> PushView:
        self._last_push = now
        return PushView(tuple(self._target(m) for m in self.lbs.values()), self.view())

    @staticmethod
    def _target(m: LBMember) -> Target:
        return Target(m.name, m.mac, m.port)

    def _all_hosts(self):
        return [*self.edges.values(), *self.lbs.values(), *self.nfs.values()]

    def _check_free(self, name: str, mac: str, port: int) -> None:
        for h in self._all_hosts():
            if h.name == name:
                raise PolicyError(f"name {name} is already in use")
            if h.mac == mac:
                raise PolicyError(f"MAC {mac} is already used by {h.name}")
            if h.port == port:
                raise PolicyError(f"switch port {port} is already used by {h.name}")

    def _lb(self, name: str) -> LBMember:
        if name not in self.lbs:
            raise UnknownName(f"no LB node named {name!r}; members: {', '.join(self.lbs) or 'none'}")
        return self.lbs[name]

    def _nf(self, name: str) -> NFMember:
        if name not in self.nfs:
            raise UnknownName(f"no NF named {name!r}; NFs: {', '.join(self.nfs) or 'none'}")
        return self.nfs[name]


TUNABLES = ("heartbeat_timeout", "join_timeout", "repush_interval", "probe_interval",
            "nf_detect_timeout")


def tunables_of(cfg: object) -> dict:
    """The timing settings of a config (checked: every key known, chain_len given)."""
    if not isinstance(cfg, dict):
        raise PolicyError("config must be a JSON object")
    known = {"secret_file", "chain_len", "mode", "edge_ports", "lbs", "nfs", *TUNABLES}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise PolicyError(f"unknown config keys {unknown}: valid keys are {sorted(known)}")
    if "chain_len" not in cfg:
        raise PolicyError("config lacks 'chain_len'")
    return {k: cfg[k] for k in TUNABLES if k in cfg}


def _mac_port(item: object, where: str) -> tuple[str, int]:
    if not isinstance(item, dict) or "mac" not in item or "port" not in item:
        raise PolicyError(f"{where} must be an object with 'mac' and 'port'")
    return item["mac"], item["port"]
