"""os-ken application (OpenFlow 1.3) driving the gateway switch ``gw`` from a ``Policy``.

Started by ``python -m ryu_apps.launch`` (which calls ``configure`` first). It

- steers IPv4 arriving on client/server ports per connection onto the LB ports that are
  up, hashed in the switch by the Nicira ``bundle`` action (symmetric 5-tuple, HRW), and
  rewrites the member list live as LB nodes join or fail (each node keeps its slot in the
  list, so only the connections of a node that leaves or comes up change LB node);
- delivers frames from LB and NF ports (chain frames, LB->NF, NF->host) by destination MAC;
- receives agents' heartbeats (Ethertype 0x88B5 to 02:00:00:00:ff:01) as packet-ins and
  sends views to the agents as packet-outs, both authenticated by ``agents.wire``;
- sends every NF health probes that cross it, as packet-outs, and takes them back as
  packet-ins (``ryu_apps.probe``; the policy judges them);
- serves a small JSON REST API (os-ken's eventlet WSGI server)::

    GET    /health              {"status": "ok", "switch_connected": bool, "epoch": n}
    GET    /view                the whole state (Policy.state + counters)
    POST   /nfs                 {"name", "mac", "port"}: add an NF (active)
    POST   /nfs/<name>/drain    no new connections for that NF
    DELETE /nfs/<name>          mark it failed (agents purge its entries)
    POST   /lbs                 {"name", "mac", "port"}: add an LB node
    DELETE /lbs/<name>          remove an LB node

  Mutations answer 200 with the new state; bad input 400, unknown names/paths 404, wrong
  method 405, always as ``{"error": "..."}``.

Flow table (table 0): 300 heartbeats and returned NF health probes (``ryu_apps.probe``: UDP
to the controller's MAC) -> controller; 210 IPv4 fragments (first and later,
``nw_frag=yes``) from an edge port -> bundle over LB ports hashing the two addresses only
(``symmetric_l3``), so every fragment of a datagram, in either direction, reaches one LB node
(OVS 3.1's ``symmetric_l3l4+udp`` also leaves the ports out of any fragment's hash, in either
fragment mode: this flow says so rather than relying on it); 200 other IPv4 from an edge
port -> bundle over LB ports (symmetric 5-tuple); both drop when no LB node is up; 150
anything else from an edge port -> drop; 100 dst MAC -> its port; 0 drop. The steering flows
are ``steering_flows``, rewritten in full on every change.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import NamedTuple

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import nicira_ext, ofproto_v1_3

from agents import messages, wire
from ryu_apps import store
from ryu_apps.policy import (CONTROLLER_MAC, EMPTY_SLOT_PORT, AddHostRoute, DelHostRoute, Note,
                             Policy, PolicyError, PushView, SendProbe, SetSteering, UnknownName,
                             tunables_of)
from ryu_apps.probe import PROBE_PORT, parse_probe, probe_frame

ETH_CHAINLB = wire.ETHERTYPE
ETH_IPV4 = 0x0800
# OVS's enum nx_hash_fields (os-ken names only 0 and 1): 3 hashes the two addresses, the
# protocol and the two TCP/SCTP/UDP ports; 6 the two addresses only; both symmetric
NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP = 3
NX_HASH_FIELDS_SYMMETRIC_L3 = 6
COOKIE = 0xC4A1
PRIO_HEARTBEAT, PRIO_STEER_FRAG, PRIO_STEER, PRIO_EDGE_DROP, PRIO_ROUTE, PRIO_MISS = \
    300, 210, 200, 150, 100, 0
TICK = 0.1

_SETTINGS: dict | None = None


class SteeringFlow(NamedTuple):
    """One flow of the steering: ``match`` holds ``OFPMatch`` keyword arguments; ``hash_fields``
    is the ``bundle`` action's fields (HRW over ``members``), None for no action (drop)."""
    priority: int
    match: dict
    hash_fields: int | None
    members: tuple[int, ...] = ()


def steering_flows(edge_ports, lb_ports) -> list[SteeringFlow]:
    """The flows that steer IPv4 from ``edge_ports`` over ``lb_ports`` (their slots, in order;
    none: IPv4 is dropped), per edge port: fragments by addresses, other IPv4 by connection,
    anything else dropped. The same (priority, match) pairs whatever ``lb_ports``, so a new
    call's flows replace the last's."""
    lb_ports = tuple(lb_ports)
    flows = []
    for port in edge_ports:
        # ip_frag (NXM_NX_IP_FRAG, value/mask: NXM_IP_FRAG_YES is any fragment) needs the
        # Ethertype ahead of it in the match, and OFPMatch orders its fields by OXM class:
        # eth_type (OpenFlow basic, 0x8000) would follow ip_frag (NXM_1, 0x0001) and OVS
        # would reject the flow (OFPBMC_BAD_PREREQ); eth_type_nxm (NXM_0) precedes it.
        frag = {"in_port": port, "eth_type_nxm": ETH_IPV4, "ip_frag": nicira_ext.NXM_IP_FRAG_YES}
        ipv4 = {"in_port": port, "eth_type": ETH_IPV4}
        if lb_ports:  # else no LB node is up: drop
            flows += [SteeringFlow(PRIO_STEER_FRAG, frag, NX_HASH_FIELDS_SYMMETRIC_L3, lb_ports),
                      SteeringFlow(PRIO_STEER, ipv4, NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP, lb_ports)]
        else:
            flows += [SteeringFlow(PRIO_STEER_FRAG, frag, None),
                      SteeringFlow(PRIO_STEER, ipv4, None)]
        flows.append(SteeringFlow(PRIO_EDGE_DROP, {"in_port": port}, None))
    return flows


def configure(cfg: dict, secret: bytes, rest_host: str = "127.0.0.1", rest_port: int = 8080,
              state_path: str | None = None, snapshot: dict | None = None) -> None:
    """Hand the app its config before os-ken instantiates it (see ``ryu_apps.launch``):
    ``state_path`` keeps the view durable; ``snapshot`` (read from it) is resumed from."""
    global _SETTINGS
    _SETTINGS = {"cfg": cfg, "secret": secret, "rest_host": rest_host, "rest_port": rest_port,
                 "state_path": state_path, "snapshot": snapshot}


class Gateway(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if _SETTINGS is None:
            raise RuntimeError("ryu_apps.gateway needs configure(); start it with python -m ryu_apps.launch")
        self.secret = _SETTINGS["secret"]
        cfg, snap = _SETTINGS["cfg"], _SETTINGS["snapshot"]
        self.state_path = _SETTINGS["state_path"]
        # a fresh start clears the switch's flows first; a resumed one, and a reconnect,
        # rewrite them in place (each flow replaces its own): traffic never meets an empty table
        self._clear_on_connect = snap is None
        self.policy = (Policy.restore(snap, time.monotonic(), **tunables_of(cfg)) if snap
                       else Policy.from_config(cfg, now=time.monotonic()))
        self._saved: dict | None = None
        self._persist()
        self.dp = None
        self.counters: Counter = Counter()
        self.rest = RestApp(self)
        self._rest_addr = (_SETTINGS["rest_host"], _SETTINGS["rest_port"])
        self._rest_server = hub.WSGIServer(self._rest_addr, self.rest)  # binds now: errors surface early

    def start(self):
        super().start()
        self.threads.append(hub.spawn(self._rest_server.serve_forever))
        self.threads.append(hub.spawn(self._ticker))
        self.logger.info("REST API on http://%s:%d", *self._rest_addr)

    # --- switch events ---

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _on_features(self, ev):
        dp = ev.msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        self.dp = dp
        self.logger.info("switch %016x connected", dp.id)
        if self._clear_on_connect:
            dp.send_msg(parser.OFPFlowMod(dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                                          out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY))
            self._clear_on_connect = False
        self._flow(PRIO_MISS, parser.OFPMatch(), [])
        self._flow(PRIO_HEARTBEAT, parser.OFPMatch(eth_type=ETH_CHAINLB, eth_dst=CONTROLLER_MAC),
                   [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)])
        self._flow(PRIO_HEARTBEAT, parser.OFPMatch(eth_type=ETH_IPV4, eth_dst=CONTROLLER_MAC,
                                                   ip_proto=17, udp_dst=PROBE_PORT),
                   [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)])
        self.apply(self.policy.start(time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _on_disconnect(self, ev):
        if ev.datapath is self.dp:
            self.dp = None
            self.policy.switch_lost()
            self.logger.warning("switch disconnected")

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _on_packet_in(self, ev):
        msg = ev.msg
        data = bytes(msg.data)
        self.counters["packet_in"] += 1
        probe = parse_probe(data)
        if probe is not None:
            self.counters["probes_back"] += 1
            self.apply(self.policy.probe_reply(*probe, msg.match.get("in_port"),
                                               time.monotonic()))
            return
        if len(data) < 14 or int.from_bytes(data[12:14], "big") != ETH_CHAINLB:
            self.counters["dropped_other"] += 1
            return
        try:
            hb = wire.decode(data[14:], self.secret)
        except wire.WireError as e:
            self.counters["dropped_bad_frame"] += 1
            self.logger.warning("dropped control frame from port %s: %s", msg.match.get("in_port"), e)
            return
        if not isinstance(hb, messages.Heartbeat):
            self.counters["dropped_not_heartbeat"] += 1
            return
        member = self.policy.lbs.get(hb.lb)
        if member is not None and member.port != msg.match.get("in_port"):
            self.counters["dropped_wrong_port"] += 1
            self.logger.warning("heartbeat of %s on port %s, expected %s",
                                hb.lb, msg.match.get("in_port"), member.port)
            return
        try:
            acts = self.policy.heartbeat(hb.lb, hb.epoch, hb.entries, time.monotonic())
        except UnknownName as e:
            self.counters["dropped_unknown_lb"] += 1
            self.logger.debug("%s", e)
            return
        self.counters["heartbeats"] += 1
        self.apply(acts)

    def _ticker(self):
        while True:
            # no slower than the probes are due (a probe interval below TICK is kept)
            hub.sleep(min(TICK, self.policy.probe_interval))
            try:
                self.apply(self.policy.tick(time.monotonic()))
            except Exception:  # keep ticking; the log says what broke
                self.logger.exception("tick failed")

    # --- policy actions -> switch ---

    def _persist(self) -> None:
        """Save the policy's durable state if it changed (before its actions run)."""
        if not self.state_path:
            return
        snap = self.policy.snapshot()
        if snap != self._saved:
            store.save(self.state_path, snap)
            self._saved = snap

    def apply(self, actions) -> None:
        self._persist()
        for act in actions:
            if isinstance(act, Note):
                self.logger.info("%s", act.text)
            elif isinstance(act, PushView):
                self._push_view(act)
            elif self.dp is None:
                continue  # installed in full when the switch connects
            elif isinstance(act, AddHostRoute):
                parser = self.dp.ofproto_parser
                self._flow(PRIO_ROUTE, parser.OFPMatch(eth_dst=act.mac),
                           [parser.OFPActionOutput(act.port)])
            elif isinstance(act, DelHostRoute):
                self._delete(PRIO_ROUTE, self.dp.ofproto_parser.OFPMatch(eth_dst=act.mac))
            elif isinstance(act, SetSteering):
                self._set_steering(act)
            elif isinstance(act, SendProbe):
                ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
                frame = probe_frame(wire.mac_bytes(act.mac), wire.mac_bytes(CONTROLLER_MAC),
                                    act.nf, act.seq)
                self.dp.send_msg(parser.OFPPacketOut(
                    self.dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                    actions=[parser.OFPActionOutput(act.port)], data=frame))
                self.counters["probes_sent"] += 1
            else:
                raise TypeError(f"unknown policy action {act!r}")

    def _set_steering(self, act: SetSteering) -> None:
        parser = self.dp.ofproto_parser
        for f in steering_flows(act.edge_ports, act.lb_ports):
            actions = [] if f.hash_fields is None else [parser.NXActionBundle(
                algorithm=nicira_ext.NX_BD_ALG_HRW, fields=f.hash_fields,
                basis=0, slave_type=nicira_ext.NXM_OF_IN_PORT, n_slaves=len(f.members),
                ofs_nbits=0, dst=0, slaves=list(f.members))]
            self._flow(f.priority, parser.OFPMatch(**f.match), actions)
        self.logger.info("steering over LB ports %s (%d: empty slot)", list(act.lb_ports),
                         EMPTY_SLOT_PORT)

    def _push_view(self, act: PushView) -> None:
        self.counters["views_pushed"] += 1
        if self.dp is None:
            return
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        for t in act.targets:
            try:
                frame = wire.frame_bytes(wire.mac_bytes(t.mac), wire.mac_bytes(CONTROLLER_MAC),
                                         act.view, self.secret)
            except ValueError as e:
                self.logger.error("cannot send view epoch %d to %s: %s", act.view.epoch, t.name, e)
                continue
            self.dp.send_msg(parser.OFPPacketOut(
                self.dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                actions=[parser.OFPActionOutput(t.port)], data=frame))
            self.counters["view_frames"] += 1

    def _flow(self, prio: int, match, actions) -> None:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        self.dp.send_msg(parser.OFPFlowMod(self.dp, cookie=COOKIE, priority=prio, match=match,
                                           instructions=inst, command=ofp.OFPFC_ADD))

    def _delete(self, prio: int, match) -> None:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        self.dp.send_msg(parser.OFPFlowMod(self.dp, priority=prio, match=match,
                                           command=ofp.OFPFC_DELETE_STRICT,
                                           out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY))

    # --- REST helpers ---

    def state(self) -> dict:
        st = self.policy.state(time.monotonic())
        st["switch_connected"] = self.dp is not None
        st["counters"] = dict(self.counters)
        return st


# --- REST ------------------------------------------------------------------------------

class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}
_NAME = r"(?P<name>[^/]+)"


class RestApp:
    """WSGI callable: the JSON API over a ``Gateway``."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.routes = [
            (re.compile(r"^/health$"), {"GET": self.health}),
            (re.compile(r"^/view$"), {"GET": self.view}),
            (re.compile(r"^/nfs$"), {"POST": self.add_nf}),
            (re.compile(rf"^/nfs/{_NAME}/drain$"), {"POST": self.drain_nf}),
            (re.compile(rf"^/nfs/{_NAME}$"), {"DELETE": self.remove_nf}),
            (re.compile(r"^/lbs$"), {"POST": self.add_lb}),
            (re.compile(rf"^/lbs/{_NAME}$"), {"DELETE": self.remove_lb}),
        ]

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/").rstrip("/") or "/"
        try:
            status, body = self.dispatch(method, path, environ)
        except HttpError as e:
            status, body = e.status, {"error": str(e)}
        except UnknownName as e:
            status, body = 404, {"error": str(e)}
        except PolicyError as e:
            status, body = 400, {"error": str(e)}
        except Exception as e:  # a bug: say so, keep serving
            self.gw.logger.exception("REST %s %s failed", method, path)
            status, body = 500, {"error": f"internal error: {e}"}
        if status != 200 or method != "GET":
            self.gw.logger.info("REST %s %s -> %d %s", method, path, status,
                                body.get("error", "") if status != 200 else "")
        data = (json.dumps(body, indent=1) + "\n").encode()
        start_response(f"{status} {_REASONS.get(status, '')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def dispatch(self, method, path, environ):
        for regex, handlers in self.routes:
            m = regex.match(path)
            if m is None:
                continue
            if method not in handlers:
                raise HttpError(405, f"{method} not allowed on {path}; use {', '.join(handlers)}")
            return 200, handlers[method](environ, **m.groupdict())
        raise HttpError(404, f"no such resource {path}; try GET /view, GET /health, POST /nfs, "
                             "POST /nfs/<name>/drain, DELETE /nfs/<name>, POST /lbs, DELETE /lbs/<name>")

    @staticmethod
    def body(environ) -> dict:
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        raw = environ["wsgi.input"].read(n) if n else b""
        try:
            obj = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, f"body is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise HttpError(400, 'body must be a JSON object like {"name": "nf4", '
                                 '"mac": "02:00:00:00:04:04", "port": 12}')
        return obj

    def member(self, environ, optional: tuple[str, ...] = ()) -> tuple:
        """name, mac, port (and the ``optional`` fields, '' when absent) of a request body."""
        b = self.body(environ)
        missing = [k for k in ("name", "mac", "port") if k not in b]
        if missing:
            raise HttpError(400, f"body lacks {', '.join(missing)}: expected "
                                 '{"name": ..., "mac": "02:00:00:00:KK:II", "port": <switch port>}')
        valid = ("name", "mac", "port", *optional)
        extra = sorted(set(b) - set(valid))
        if extra:
            raise HttpError(400, f"unknown fields {extra}: expected {', '.join(valid)}")
        return (b["name"], b["mac"], b["port"], *(b.get(k, "") for k in optional))

    def _do(self, acts) -> dict:
        self.gw.apply(acts)
        return self.gw.state()

    def health(self, environ):
        return {"status": "ok", "switch_connected": self.gw.dp is not None,
                "epoch": self.gw.policy.epoch}

    def view(self, environ):
        return self.gw.state()

    def add_nf(self, environ):
        return self._do(self.gw.policy.add_nf(*self.member(environ), now=time.monotonic()))

    def drain_nf(self, environ, name):
        return self._do(self.gw.policy.drain_nf(name, now=time.monotonic()))

    def remove_nf(self, environ, name):
        return self._do(self.gw.policy.remove_nf(name, now=time.monotonic()))

    def add_lb(self, environ):
        name, mac, port, cluster_mac = self.member(environ, ("cluster_mac",))
        return self._do(self.gw.policy.add_lb(name, mac, port, now=time.monotonic(),
                                               cluster_mac=cluster_mac))

    def remove_lb(self, environ, name):
        return self._do(self.gw.policy.remove_lb(name, now=time.monotonic()))

