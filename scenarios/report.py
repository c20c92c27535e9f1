"""Results of a run, built from what the run collected (pure functions, pandas).

Inputs:

- ``meta``: ``{"scenario", "mode", "run_id"}``;
- ``planned``: the flows the scenario started, each a mapping with ``flow_id, client, server,
  client_ip, server_ip, server_port, start_s, duration_s, proto`` (``tcp`` | ``udp``); the triple
  ``(client_ip, server_ip, server_port)`` must be unique in a run (one iperf3 server per port);
- ``iperf``: ``{flow_id: iperf3 -J document}`` (see :func:`load_iperf_json`; missing = no output);
- ``nf_dumps``: ``{nf name: agents.nf dump document}``, ``None`` for an NF whose dump is missing;
  its ``flows`` are per-direction entries, its ``related`` the ICMP errors the NF forwarded,
  counted by the tuple of the packet they are about (see ``agents.nf``);
- ``apps`` (optional): one client-side outcome record per connection a real application made
  (``APP_FIELDS``: ``app, conn_id, client, server, client_ip, client_port, server_ip,
  server_port, proto, start_s, duration_s`` (or None), ``completed, bytes`` (or None),
  ``error``), e.g. from :func:`load_apps`; validated, a bad one is a ValueError naming it;
- ``events``: ``[(time_s, name, detail)]``, times on the same clock as ``start_s``.

Every NF entry goes to one row of flows.csv (:func:`assign_entries`), and a related entry
(an ICMP error) counts as a packet of the connection it belongs to, at the NF that forwarded it
(in ``packets_by_nf``, ``packets``, ``nf_bytes``, ``related_packets``): an ICMP error that
reached another NF than its connection's makes the connection ``moved``. In this order:

- an app connection (``origin`` planned, ``role`` app, ``app`` the record's program, ``flow_id``
  its conn_id, ``proto`` and ``flow_proto`` its proto) takes the entries of its exact 5-tuple, in either direction; its
  ``end_s`` is start_s + duration_s, ``bytes``, ``completed`` and ``error`` are the record's,
  ``throughput_bps`` is 8 * bytes / duration_s (empty when either is unknown);
- a planned flow (``origin`` planned, ``app`` iperf3) takes those matching (client ip, server ip, server port),
  in either direction; the client port tells its connections apart. iperf3 opens a control
  connection (TCP) and data connections (TCP or UDP): the data ones are those whose client port
  is in ``start.connected[].local_port``; a TCP connection not listed there is the control
  connection. Every flow gets one control row and one row per data stream, with empty NF columns
  for a connection no NF saw;
- every other connection an NF saw is one row of ``origin`` and ``role`` observed (``app`` empty)
  (``flow_id`` o001, o002, ... in the order of their tuples): the NF entries grouped by the
  canonical 5-tuple (both directions one row; ICMP echo, ports 0, one row per pair of hosts).
  Its client is the endpoint with the higher (ephemeral) port, with equal ports the first
  source of its entries in sorted order; host names from ``topo.testbed.name_of_ip`` (the IP
  when outside the plan). Nothing is known of its outcome: start/end, bytes and throughput
  are empty, ``completed`` is NA (a nullable boolean column, empty in the CSV).

``nf_first``: NF dumps carry no timestamps, so the first NF is inferred. With
``nf_conntrack_tcp_loose=0`` only the NF that saw a TCP connection's SYN accepts its packets;
an NF that got it later counts every packet as invalid. So ``nf_first`` is the NF with the most
accepted (packets - invalid - related) packets, ties and all-invalid cases broken by most
packets, then by name: ICMP errors say nothing about who saw the connection's start. For UDP
(conntrack picks it up anywhere) this is the NF with the most packets.
"""
from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from topo.testbed import name_of_ip

FLOW_COLUMNS = [
    "scenario", "mode", "run_id", "flow_id", "origin", "role", "app", "proto", "flow_proto",
    "client", "server", "client_ip", "server_ip", "client_port", "server_port",
    "start_s", "duration_s", "end_s",
    "nf_first", "nfs_seen", "packets_by_nf", "invalid_by_nf", "packets", "invalid_packets",
    "related_packets", "nf_bytes", "moved", "bytes", "throughput_bps", "completed", "error",
]

SUMMARY_COLUMNS = [
    "scenario", "mode", "run_id", "variant", "fastpath", "flows", "apps", "connections", "observed",
    "observed_unplanned", "moved", "moved_unexpected", "moved_flows",
    "broken", "completed_pct", "pcc_pct", "throughput_bps_mean", "invalid", "dropped",
    "nf_flows", "nf_flows_by_phase", "events", "event_times", "dip_depth_pct", "dip_s", "dips",
    "nf_detect_s", "nf_detections", "controller_restore_s", "controller_outages",
    "lb_fast_pct", "missing_dumps", "unmatched_entries", "status",
]
STATUS_OK = "complete"            # summary.csv ``status``; otherwise "failed: ..." or "interrupted"
STATUS_OK_BEFORE = ("ok",)        # what earlier versions wrote for a run that completed

PLANNED_FIELDS = ("flow_id", "client", "server", "client_ip", "server_ip", "server_port",
                  "start_s", "duration_s", "proto")


# --- loading -----------------------------------------------------------------------------

def load_iperf_json(path) -> Dict[str, Any]:
    """Read an iperf3 -J output file; an absent, empty or truncated file becomes an error doc."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        return {"error": f"no iperf3 output ({exc.strerror}: {p})"}
    if not text.strip():
        return {"error": f"no iperf3 output (empty file {p.name})"}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"error": f"unreadable iperf3 output in {p.name}: {exc.msg}"}
    return doc if isinstance(doc, dict) else {"error": f"unexpected iperf3 output in {p.name}"}


def load_nf_dump(path) -> Optional[Dict[str, Any]]:
    """Read an ``agents.nf dump`` file; None when it is absent or unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and "flows" in doc else None


# --- helpers -----------------------------------------------------------------------------

def nf_sort_key(name: str) -> Tuple[str, int, str]:
    """Natural order: nf2 before nf10."""
    m = re.match(r"^(.*?)(\d+)$", name)
    return (m.group(1), int(m.group(2)), name) if m else (name, -1, name)


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ";".join(f"{k}:{counts[k]}" for k in sorted(counts, key=nf_sort_key))


def _num(value: Any) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _planned_list(planned) -> List[Dict[str, Any]]:
    rows = planned.to_dict("records") if isinstance(planned, pd.DataFrame) else list(planned)
    out, seen = [], {}
    for i, row in enumerate(rows):
        missing = [f for f in PLANNED_FIELDS if f not in row]
        if missing:
            raise ValueError(f"planned flow #{i} lacks {', '.join(missing)} "
                             f"(needs {', '.join(PLANNED_FIELDS)})")
        proto = str(row["proto"]).lower()
        if proto not in ("tcp", "udp"):
            raise ValueError(f"planned flow {row['flow_id']!r}: proto must be tcp or udp, "
                             f"got {row['proto']!r}")
        triple = (str(row["client_ip"]), str(row["server_ip"]), int(row["server_port"]))
        if triple in seen:
            raise ValueError(f"planned flows {seen[triple]!r} and {row['flow_id']!r} share "
                             f"client ip, server ip and server port {triple}: connections could "
                             f"not be told apart (use one server port per flow)")
        seen[triple] = row["flow_id"]
        out.append(dict(row, proto=proto))
    return out


def normalize_events(events) -> List[Tuple[float, str, str]]:
    """[(time_s, name, detail)] from tuples or mappings, sorted by time."""
    out = []
    for ev in events or []:
        if isinstance(ev, Mapping):
            t, name, detail = ev.get("time_s"), ev.get("name"), ev.get("detail", "")
        else:
            t, name, detail = (list(ev) + [""])[:3]
        if _num(t) is None or not name:
            raise ValueError(f"bad event {ev!r}: expected (time_s, name, detail)")
        out.append((float(t), str(name), "" if detail is None else str(detail)))
    return sorted(out, key=lambda e: e[0])


# --- iperf3 ------------------------------------------------------------------------------

@dataclass
class IperfResult:
    """What one iperf3 client run measured."""
    completed: bool
    error: str
    elapsed_s: Optional[float]
    # (proto, client port) -> (bytes received, bits per second received)
    streams: Dict[Tuple[str, int], Tuple[Optional[float], Optional[float]]] = field(
        default_factory=dict)


def iperf_result(doc: Optional[Mapping[str, Any]], proto: str) -> IperfResult:
    """Interpret an iperf3 -J client document for a flow of ``proto``."""
    if not doc:
        return IperfResult(False, "no iperf3 output", None)
    start, end = doc.get("start") or {}, doc.get("end") or {}
    error = str(doc.get("error") or "")
    received = end.get("sum_received") or {}
    sent = end.get("sum_sent") or end.get("sum") or {}
    elapsed = _num(sent.get("end"))
    if elapsed is None and doc.get("intervals"):
        elapsed = _num((doc["intervals"][-1].get("sum") or {}).get("end"))
    connected = [c for c in start.get("connected") or [] if "local_port" in c]
    by_socket = {}
    for s in end.get("streams") or []:
        part = s.get("receiver") or s.get("udp") or {}
        by_socket[part.get("socket")] = part
    streams: Dict[Tuple[str, int], Tuple[Optional[float], Optional[float]]] = {}
    for c in connected:
        if len(connected) == 1 and received:
            got = (_num(received.get("bytes")), _num(received.get("bits_per_second")))
        else:
            part = by_socket.get(c.get("socket"), {})
            got = (_num(part.get("bytes")), _num(part.get("bits_per_second")))
        streams[(proto, int(c["local_port"]))] = got
    if not error:
        if not end:
            error = "iperf3 reported no end result"
        elif proto == "tcp" and not (_num(received.get("bytes")) or 0) > 0:
            error = "no bytes received"
    return IperfResult(not error, error, elapsed, streams)


DIP_BEFORE_S = 3.0        # the baseline: each running flow's rate over these seconds before
DIP_WINDOW_S = 6          # seconds after an event that its dip is looked for in
DIP_LEVEL = 0.9           # a second counts as dipped below this share of the baseline


def flow_intervals(start_s: float, doc: Optional[Mapping[str, Any]]) -> List[Tuple[float, float, float]]:
    """A flow's iperf3 intervals as (start, end, bits/s) in run time (its ``start_s`` on)."""
    out = []
    for iv in (doc or {}).get("intervals") or []:
        sm = iv.get("sum") or {}
        a, b, bps = _num(sm.get("start")), _num(sm.get("end")), _num(sm.get("bits_per_second"))
        if a is not None and b is not None and bps is not None and b > a:
            out.append((start_s + a, start_s + b, bps))
    return out


def event_dips(planned, iperf: Mapping[str, Any], events) -> List[Dict[str, Any]]:
    """Per event, the dip in throughput of the iperf3 flows running across it (the patent's
    "seamless"): each flow's rate relative to its own mean over the ``DIP_BEFORE_S`` before
    the event, summed over the flows and divided by the sum of their baselines, per second
    of the ``DIP_WINDOW_S`` after it (a flow that stopped counts 0). ``depth_pct``: 100 *
    (1 - the lowest such second), at least 0; ``dip_s``: the seconds below ``DIP_LEVEL``;
    ``flows``: how many flows ran across it (no dip is measured without any)."""
    flows = _planned_list(planned)
    series = {f["flow_id"]: flow_intervals(float(f["start_s"]), (iperf or {}).get(f["flow_id"]))
              for f in flows}
    ends = {f["flow_id"]: float(f["start_s"]) + float(f["duration_s"]) for f in flows}
    out = []
    for t, name, detail in normalize_events(events):
        base, running = 0.0, []
        for fid, ivs in series.items():
            before = [bps for a, b, bps in ivs if t - DIP_BEFORE_S <= a and b <= t + 1e-6]
            if len(before) < DIP_BEFORE_S - 1 or ends[fid] < t + DIP_WINDOW_S:
                continue                      # not running across the whole window
            running.append(fid)
            base += sum(before) / len(before)
        shares = []
        for k in range(DIP_WINDOW_S):
            mid = t + k + 0.5
            got = sum(next((bps for a, b, bps in series[fid] if a <= mid < b), 0.0)
                      for fid in running)
            shares.append(got / base if base > 0 else math.nan)
        label = f"{t:g}s {name}" + (f"({detail})" if detail else "")
        if not running or base <= 0:
            out.append({"event": label, "flows": len(running), "depth_pct": math.nan,
                        "dip_s": math.nan})
            continue
        out.append({"event": label, "flows": len(running),
                    "depth_pct": round(max(0.0, 100.0 * (1 - min(shares))), 1),
                    "dip_s": sum(1 for x in shares if x < DIP_LEVEL)})
    return out


# --- app records ------------------------------------------------------------------------

APP_FIELDS = ("app", "conn_id", "client", "server", "client_ip", "client_port", "server_ip",
              "server_port", "proto", "start_s", "duration_s", "completed", "bytes", "error")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _app_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with field ``name`` of an app record (None when it is fine)."""
    if name in ("app", "conn_id", "client", "server"):
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if name in ("client_ip", "server_ip"):
        try:
            ipaddress.IPv4Address(value)
        except (ipaddress.AddressValueError, ValueError, TypeError):
            return "must be an IPv4 address"
        return None
    if name in ("client_port", "server_port"):
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
        return None if ok else "must be a port number 1..65535"
    if name == "proto":
        return None if isinstance(value, str) and value.lower() in ("tcp", "udp") \
            else "must be tcp or udp"
    if name == "start_s":
        return None if _is_number(value) else "must be a number of seconds"
    if name == "duration_s":
        return None if value is None or (_is_number(value) and value >= 0) \
            else "must be a number of seconds >= 0 or null"
    if name == "completed":
        return None if isinstance(value, bool) else "must be true or false"
    if name == "bytes":
        return None if value is None or (_is_number(value) and value >= 0
                                         and float(value).is_integer()) \
            else "must be a whole number >= 0 or null"
    if name == "error":
        return None if isinstance(value, str) else "must be a string"
    return None


def _app_list(apps, taken_ids=()) -> List[Dict[str, Any]]:
    """Validated app records (proto lower-cased); ValueError naming the record and field."""
    out: List[Dict[str, Any]] = []
    ids: Dict[str, int] = {}
    tuples: Dict[tuple, str] = {}
    taken = {str(t) for t in taken_ids}
    for i, rec in enumerate(apps or []):
        if not isinstance(rec, Mapping):
            raise ValueError(f"app record #{i}: expected a mapping, got {type(rec).__name__}")
        name = f"app record #{i}" + (f" ({rec['conn_id']!r})" if "conn_id" in rec else "")
        missing = [f for f in APP_FIELDS if f not in rec]
        if missing:
            raise ValueError(f"{name} lacks {', '.join(missing)} "
                             f"(needs {', '.join(APP_FIELDS)})")
        for f in APP_FIELDS:
            problem = _app_problem(f, rec[f])
            if problem:
                raise ValueError(f"{name}: field {f!r} {problem}, got {rec[f]!r}")
        cid = rec["conn_id"]
        if cid in ids or cid in taken:
            other = f"app record #{ids[cid]}" if cid in ids else "a planned flow"
            raise ValueError(f"{name}: conn_id {cid!r} is also the id of {other}")
        ids[cid] = i
        proto = rec["proto"].lower()
        five = (proto, rec["client_ip"], rec["client_port"], rec["server_ip"],
                rec["server_port"])
        if five in tuples:
            raise ValueError(f"{name}: same 5-tuple {five} as app connection {tuples[five]!r}: "
                             f"their NF counters could not be told apart")
        tuples[five] = cid
        out.append(dict(rec, proto=proto))
    return out


def load_apps(path) -> Tuple[List[Dict[str, Any]], int]:
    """Read a JSON-lines file of app records: (records, lines that did not parse).

    Blank lines are ignored; a line that is not a JSON object is skipped and counted; an
    absent file is no records. The records are validated by :func:`build_flows`."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return [], 0
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


# --- NF entries --------------------------------------------------------------------------

ENTRY_COLUMNS = ["nf", "kind", "src", "dst", "proto", "sport", "dport", "packets", "bytes",
                 "invalid"]


def _ports_of(proto: str, sport: int, dport: int) -> Tuple[int, int]:
    return (sport, dport) if proto in ("tcp", "udp") else (0, 0)


def _parse_entries(nf_dumps) -> Tuple[List[Dict[str, Any]], int]:
    """Every NF entry of the dumps (``kind`` flow or related) and how many were malformed."""
    rows, malformed = [], 0
    for nf, doc in (nf_dumps or {}).items():
        for kind, key in (("flow", "flows"), ("related", "related")):
            for f in (doc or {}).get(key) or []:
                try:
                    proto = str(f["proto"])
                    sport, dport = _ports_of(proto, int(f["sport"]), int(f["dport"]))
                    row = {"nf": nf, "kind": kind, "src": str(f["src"]), "dst": str(f["dst"]),
                           "proto": proto, "sport": sport, "dport": dport,
                           "packets": int(f["packets"]), "bytes": int(f["bytes"]),
                           "invalid": int(f.get("invalid", 0)) if kind == "flow" else 0}
                except (KeyError, TypeError, ValueError, AttributeError):
                    malformed += 1
                    continue
                rows.append(row)
    return rows, malformed


def nf_entries(nf_dumps: Mapping[str, Optional[Mapping[str, Any]]]) -> pd.DataFrame:
    """All NF entries as one table (ENTRY_COLUMNS): ``kind`` ``flow`` for a per-direction entry,
    ``related`` for ICMP errors counted by the inner tuple (ports 0 unless TCP/UDP);
    malformed entries are left out."""
    return pd.DataFrame(_parse_entries(nf_dumps)[0], columns=ENTRY_COLUMNS)


def _ip_key(ip: str) -> Tuple[int, Any]:
    try:
        return (0, int(ipaddress.IPv4Address(ip)))
    except (ipaddress.AddressValueError, ValueError):
        return (1, str(ip))


def conn_key(proto: str, src: str, sport: int, dst: str, dport: int) -> tuple:
    """The canonical 5-tuple of a connection: the same for both directions."""
    a, b = (_ip_key(src), sport, src), (_ip_key(dst), dport, dst)
    lo, hi = (a, b) if a <= b else (b, a)
    return (proto, lo[2], lo[1], hi[2], hi[1])


def _add(per_nf: Dict[str, Dict[str, int]], e: Mapping[str, Any]) -> None:
    acc = per_nf.setdefault(e["nf"], {"packets": 0, "bytes": 0, "invalid": 0, "related": 0})
    acc["packets"] += e["packets"]
    acc["bytes"] += e["bytes"]
    acc["invalid"] += e["invalid"]
    if e["kind"] == "related":
        acc["related"] += e["packets"]


@dataclass
class Assignment:
    """Every NF entry given to the row that accounts for it (see :func:`assign_entries`)."""
    # planned flow -> {(proto, client port): {nf: {"packets", "bytes", "invalid", "related"}}}
    planned: Dict[Any, Dict[Tuple[str, int], Dict[str, Dict[str, int]]]]
    # app conn_id -> {nf: {...}}
    apps: Dict[str, Dict[str, Dict[str, int]]]
    # canonical 5-tuple -> {"per_nf": {nf: {...}}, "entries": [entry, ...]}
    observed: Dict[tuple, Dict[str, Any]]
    malformed: int

    @property
    def unclaimed(self) -> int:
        """Entries of no planned flow or app connection (each in an observed row)."""
        return sum(len(g["entries"]) for g in self.observed.values())


def assign_entries(planned, nf_dumps, apps=None) -> Assignment:
    """Give every NF entry (per-direction flows and related ICMP errors) to a connection.

    First an app connection, by its exact 5-tuple in either direction; then a planned flow,
    by (client ip, server ip, server port) in either direction (TCP and UDP only; the client
    port tells its connections apart); everything else is grouped by canonical 5-tuple into
    observed connections. A related entry (an ICMP error counted by the header it carries)
    goes where a packet with its inner tuple would.
    """
    flows = _planned_list(planned if planned is not None else [])
    app_list = _app_list(apps, [f["flow_id"] for f in flows])
    index = {(f["client_ip"], f["server_ip"], int(f["server_port"])): f["flow_id"]
             for f in flows}
    app_index = {}
    for a in app_list:
        fwd = (a["proto"], a["client_ip"], a["client_port"], a["server_ip"], a["server_port"])
        app_index[fwd] = app_index[(fwd[0], fwd[3], fwd[4], fwd[1], fwd[2])] = a["conn_id"]
    out = Assignment({f["flow_id"]: {} for f in flows}, {a["conn_id"]: {} for a in app_list},
                     {}, 0)
    entries, out.malformed = _parse_entries(nf_dumps)
    for e in entries:
        cid = app_index.get((e["proto"], e["src"], e["sport"], e["dst"], e["dport"]))
        if cid is not None:
            _add(out.apps[cid], e)
            continue
        fid = None
        if e["proto"] in ("tcp", "udp"):
            fid, cport = index.get((e["src"], e["dst"], e["dport"])), e["sport"]
            if fid is None:
                fid, cport = index.get((e["dst"], e["src"], e["sport"])), e["dport"]
        if fid is not None:
            _add(out.planned[fid].setdefault((e["proto"], cport), {}), e)
            continue
        key = conn_key(e["proto"], e["src"], e["sport"], e["dst"], e["dport"])
        group = out.observed.setdefault(key, {"per_nf": {}, "entries": []})
        _add(group["per_nf"], e)
        group["entries"].append(e)
    return out


def match_connections(planned, nf_dumps, apps=None
                      ) -> Tuple[Dict[Any, Dict[Tuple[str, int], Dict]], int]:
    """Group NF entries into connections of planned flows (related ICMP errors included).

    Returns ({flow_id: {(proto, client_port): {nf: {"packets", "bytes", "invalid",
    "related"}}}}, number of NF entries that match no planned flow nor app connection,
    malformed ones included).
    """
    a = assign_entries(planned, nf_dumps, apps)
    return a.planned, a.unclaimed + a.malformed


def first_nf(per_nf: Mapping[str, Mapping[str, int]]) -> str:
    """The NF that most likely saw the connection first (see the module docstring)."""
    if not per_nf:
        return ""
    return min(per_nf, key=lambda nf: (-(per_nf[nf]["packets"] - per_nf[nf]["invalid"]
                                         - per_nf[nf].get("related", 0)),
                                       -per_nf[nf]["packets"], nf_sort_key(nf)))


def _observed_ends(key: tuple, entries: Sequence[Mapping[str, Any]]):
    """(client ip, client port, server ip, server port) of an observed connection: the client
    is the endpoint with the higher (ephemeral) port; with equal ports, the first source of
    the connection's entries in sorted order."""
    _, ip_a, port_a, ip_b, port_b = key
    if port_a != port_b:
        return (ip_a, port_a, ip_b, port_b) if port_a > port_b else (ip_b, port_b, ip_a, port_a)
    first = min(entries, key=lambda e: (_ip_key(e["src"]), e["sport"], _ip_key(e["dst"]),
                                        e["dport"], e["kind"]))
    return (first["src"], first["sport"], first["dst"], first["dport"])


# --- flows.csv ---------------------------------------------------------------------------

def _role(flow_proto: str, conn: Tuple[str, int], data_ports: set, unknown_data: bool,
          n_tcp_unlisted: int) -> str:
    proto, _ = conn
    if conn in data_ports:
        return "data"
    if flow_proto == "udp":
        return "data" if proto == "udp" else "control"
    # TCP flow, connection not listed as a data stream
    if unknown_data and n_tcp_unlisted > 1:
        return "unknown"
    return "control"


def _nf_columns(per_nf: Mapping[str, Mapping[str, int]]) -> Dict[str, Any]:
    packets = {nf: v["packets"] for nf, v in per_nf.items()}
    invalid = {nf: v["invalid"] for nf, v in per_nf.items() if v["invalid"]}
    return {"nf_first": first_nf(per_nf),
            "nfs_seen": ";".join(sorted(per_nf, key=nf_sort_key)),
            "packets_by_nf": _fmt_counts(packets), "invalid_by_nf": _fmt_counts(invalid),
            "packets": sum(packets.values()), "invalid_packets": sum(invalid.values()),
            "related_packets": sum(v.get("related", 0) for v in per_nf.values()),
            "nf_bytes": sum(v["bytes"] for v in per_nf.values()),
            "moved": len(per_nf) > 1}


def _host_name(ip: str) -> str:
    return name_of_ip(ip) or ip


def build_flows(meta: Mapping[str, Any], planned, iperf: Mapping[Any, Any],
                nf_dumps: Mapping[str, Optional[Mapping[str, Any]]], apps=None) -> pd.DataFrame:
    """One row per connection (columns FLOW_COLUMNS): every planned flow's connections, one
    per app connection, then one per connection an NF saw that neither claims."""
    flows = _planned_list(planned)
    app_list = _app_list(apps, [f["flow_id"] for f in flows])
    assigned = assign_entries(flows, nf_dumps, app_list)
    conns = assigned.planned
    base = {"scenario": meta.get("scenario"), "mode": meta.get("mode"),
            "run_id": meta.get("run_id")}
    rows = []
    for f in flows:
        fid, fproto = f["flow_id"], f["proto"]
        res = iperf_result((iperf or {}).get(fid), fproto)
        data_ports = set(res.streams)
        seen = conns[fid]
        unlisted_tcp = [c for c in seen if c[0] == "tcp" and c not in data_ports]
        conn_roles = {c: _role(fproto, c, data_ports, not data_ports, len(unlisted_tcp))
                      for c in seen}
        for c in data_ports - set(seen):
            conn_roles[c] = "data"
        if "control" not in conn_roles.values() and "unknown" not in conn_roles.values():
            conn_roles[("tcp", None)] = "control"          # not seen by any NF
        start = float(f["start_s"])
        end = start + res.elapsed_s if res.elapsed_s is not None else math.nan
        order = sorted(conn_roles, key=lambda c: (conn_roles[c] != "control", c[0],
                                                  -1 if c[1] is None else c[1]))
        for c in order:
            per_nf = seen.get(c, {})
            nbytes, bps = res.streams.get(c, (None, None)) if conn_roles[c] == "data" \
                else (None, None)
            rows.append({
                **base, "flow_id": fid, "origin": "planned", "role": conn_roles[c],
                "app": "iperf3", "proto": c[0], "flow_proto": fproto, "client": f["client"],
                "server": f["server"], "client_ip": f["client_ip"], "server_ip": f["server_ip"],
                "client_port": c[1], "server_port": int(f["server_port"]),
                "start_s": start, "duration_s": float(f["duration_s"]), "end_s": end,
                **_nf_columns(per_nf),
                "bytes": nbytes, "throughput_bps": bps,
                "completed": res.completed, "error": res.error,
            })
    for a in app_list:
        start = float(a["start_s"])
        dur = None if a["duration_s"] is None else float(a["duration_s"])
        nbytes = None if a["bytes"] is None else float(a["bytes"])
        rows.append({
            **base, "flow_id": a["conn_id"], "origin": "planned", "role": "app",
            "app": a["app"], "proto": a["proto"], "flow_proto": a["proto"], "client": a["client"],
            "server": a["server"], "client_ip": a["client_ip"], "server_ip": a["server_ip"],
            "client_port": a["client_port"], "server_port": a["server_port"],
            "start_s": start, "duration_s": dur,
            "end_s": start + dur if dur is not None else None,
            **_nf_columns(assigned.apps[a["conn_id"]]),
            "bytes": nbytes,
            "throughput_bps": 8 * nbytes / dur if nbytes is not None and dur else None,
            "completed": a["completed"], "error": a["error"],
        })
    observed = []
    for key, group in assigned.observed.items():
        cip, cport, sip, sport = _observed_ends(key, group["entries"])
        observed.append(((_ip_key(cip), cport, _ip_key(sip), sport, key[0]),
                         key[0], cip, cport, sip, sport, group["per_nf"]))
    observed.sort(key=lambda o: o[0])
    for n, (_, proto, cip, cport, sip, sport, per_nf) in enumerate(observed, 1):
        rows.append({
            **base, "flow_id": f"o{n:03d}", "origin": "observed", "role": "observed",
            "app": "", "proto": proto, "flow_proto": proto, "client": _host_name(cip),
            "server": _host_name(sip), "client_ip": cip, "server_ip": sip,
            "client_port": cport, "server_port": sport,
            "start_s": None, "duration_s": None, "end_s": None,
            **_nf_columns(per_nf),
            "bytes": None, "throughput_bps": None, "completed": None, "error": "",
        })
    df = pd.DataFrame(rows, columns=FLOW_COLUMNS)
    df["client_port"] = df["client_port"].astype("Int64")
    for col in ("bytes", "throughput_bps", "end_s", "start_s", "duration_s"):
        df[col] = df[col].astype("float64")
    df["moved"] = df["moved"].astype(bool)
    df["completed"] = df["completed"].astype("boolean")
    for col in ("packets", "invalid_packets", "related_packets", "nf_bytes", "server_port"):
        df[col] = df[col].astype("int64")
    return df


# --- summary.csv -------------------------------------------------------------------------

def _phases(times: Sequence[float]) -> List[Tuple[str, float, float]]:
    bounds = sorted(set(times))
    if not bounds:
        return [("all", -math.inf, math.inf)]
    out = [(f"<{bounds[0]:g}s", -math.inf, bounds[0])]
    for a, b in zip(bounds, bounds[1:]):
        out.append((f"{a:g}-{b:g}s", a, b))
    out.append((f">={bounds[-1]:g}s", bounds[-1], math.inf))
    return out


def _nf_counts(df: pd.DataFrame) -> str:
    counts = df[df["nf_first"] != ""]["nf_first"].value_counts()
    return _fmt_counts({k: int(v) for k, v in counts.items()})


def _origins(df: pd.DataFrame) -> pd.Series:
    """Each row's origin; rows of tables without the column (or with it empty) are planned."""
    if "origin" not in df:
        return pd.Series("planned", index=df.index, dtype=object)
    return df["origin"].where(df["origin"].notna() & (df["origin"] != ""), "planned")


def _completed(series: pd.Series) -> pd.Series:
    """``completed`` as plain booleans (unknown = not completed)."""
    return series.astype("boolean").fillna(False).astype(bool)


def _unaccounted(flows_df: pd.DataFrame, nf_dumps) -> Any:
    """NF entries no row of flows_df accounts for: malformed ones, and those whose connection
    (canonical 5-tuple of a row seen at an NF) has no row."""
    need = ("proto", "client_ip", "client_port", "server_ip", "server_port", "nfs_seen")
    if any(c not in flows_df for c in need):
        return pd.NA
    held = set()
    for r in flows_df[flows_df["nfs_seen"] != ""].itertuples(index=False):
        if pd.isna(r.client_port) or pd.isna(r.server_port):
            continue
        proto = str(r.proto)
        cport, sport = _ports_of(proto, int(r.client_port), int(r.server_port))
        held.add(conn_key(proto, str(r.client_ip), cport, str(r.server_ip), sport))
    entries, malformed = _parse_entries(nf_dumps)
    return malformed + sum(conn_key(e["proto"], e["src"], e["sport"], e["dst"], e["dport"])
                           not in held for e in entries)


def _outage_text(o: Mapping[str, Any]) -> str:
    """A controller outage as in summary.csv (seconds from its death until each was back):
    ``REST 1.3s, switch 1.4s, agents 1.6s, epoch 2->3`` (or what was not reached)."""
    parts = [f"{label} {o[key]:g}s" for label, key in (("REST", "rest_s"), ("switch", "switch_s"),
                                                        ("agents", "agents_s")) if key in o]
    if "epoch_after" in o:
        parts.append(f"epoch {o['epoch_before']}->{o['epoch_after']}")
    if "error" in o or "agents_s" not in o:
        parts.append(f"not back: {o.get('error', 'still waiting')}")
    return ", ".join(parts)


def _fast_pct(counts: Optional[Mapping[str, int]]) -> float:
    """The share (%) of the LB agents' forwarded packets that the kernel forwarded."""
    fast, slow = (counts or {}).get("fast_tx", 0), (counts or {}).get("forwarded", 0)
    return round(100.0 * fast / (fast + slow), 2) if fast + slow else math.nan


def build_summary(flows_df: pd.DataFrame, events=(), meta: Optional[Mapping[str, Any]] = None,
                  nf_dumps: Optional[Mapping[str, Optional[Mapping]]] = None,
                  planned=None, apps=None, status: str = STATUS_OK,
                  iperf: Optional[Mapping[str, Any]] = None,
                  detections: Optional[Mapping[str, Optional[float]]] = None,
                  outages: Sequence[Mapping[str, Any]] = (),
                  lb_counts: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """One row per run (columns SUMMARY_COLUMNS); ``status``: ``complete``, or how the run did not
    finish (``failed: ...``, ``interrupted``): such a run is left out of a set's statistics.

    flows = planned flows (iperf3 runs); apps = app connections; connections = rows;
    observed = rows seen at an NF (planned, app and observed rows); observed_unplanned = rows
    of origin ``observed`` (NF-seen connections of no planned flow or app);
    moved = rows seen at more than one NF, among all rows; moved_unexpected = those of them
    that did not start on an NF killed during the run (whose connections must move);
    moved_flows = planned flows and app connections with a moved connection;
    broken = planned flows and app connections not completed (never observed rows);
    completed_pct = 100 * the completed share of those; pcc_pct = 100 * (observed - moved) /
    observed; nf_flows = data connections per nf_first; nf_flows_by_phase splits them by the
    flow's start time at each event time ("<10s: nf1:4;nf2:3 | >=10s: nf1:1;nf4:2").
    Given ``iperf`` (flow id -> iperf3 document) and ``planned``, dip_depth_pct and dip_s are
    the deepest and the longest dip of :func:`event_dips` over the events, dips each event's
    ("8s add_nf(nf4): 12.5% 1s (11 flows)"). Given the dumps, invalid / dropped are the NFs' counters, missing_dumps the NFs whose dump
    is None and unmatched_entries the NF entries no row of flows_df accounts for (malformed
    entries, or rows missing: 0 for tables from :func:`build_flows`). Given ``lb_counts`` (the
    LB agents' ``forwarded`` and ``fast_tx`` packets), lb_fast_pct is the share the fast path
    forwarded in the kernel. ``planned`` and ``apps``,
    when given, are validated as :func:`build_flows` does; the counts come from the rows.
    """
    if planned is not None or apps is not None:
        flows = _planned_list(planned if planned is not None else [])
        _app_list(apps, [f["flow_id"] for f in flows])
    meta = dict(meta or {})
    for key in ("scenario", "mode", "run_id"):
        if key not in meta:
            meta[key] = flows_df[key].iloc[0] if len(flows_df) else ""
    evs = normalize_events(events)
    df = flows_df.assign(completed=_completed(flows_df["completed"]))
    origin = _origins(df)
    claimed = df[origin != "observed"]                  # planned flows and app connections
    is_app = claimed["role"] == "app"
    per_flow = claimed.groupby("flow_id", sort=False).agg(completed=("completed", "all"),
                                                          moved=("moved", "any"))
    observed = df[df["nfs_seen"] != ""]
    moved = int(observed["moved"].sum())
    failed = {detail for _, name, detail in evs if name == "kill_nf"}
    moved_unexpected = int((observed["moved"] & ~observed["nf_first"].isin(failed)).sum())
    data = df[df["role"] == "data"]
    done = data[data["completed"] & data["throughput_bps"].notna()]
    phases = []
    for label, lo, hi in _phases([t for t, _, _ in evs]):
        part = data[(data["start_s"] >= lo) & (data["start_s"] < hi)]
        phases.append(f"{label}: {_nf_counts(part) or '-'}")
    dumps = nf_dumps or {}
    dips = event_dips(planned, iperf, events) if iperf is not None and planned is not None \
        else []
    measured = [d for d in dips if not math.isnan(d["depth_pct"])]
    row = {
        "scenario": meta["scenario"], "mode": meta["mode"], "run_id": meta["run_id"],
        "variant": meta.get("variant", ""), "fastpath": meta.get("fastpath", ""),
        "flows": claimed[~is_app]["flow_id"].nunique(),
        "apps": claimed[is_app]["flow_id"].nunique(),
        "connections": len(df), "observed": len(observed),
        "observed_unplanned": int((origin == "observed").sum()),
        "moved": moved, "moved_unexpected": moved_unexpected,
        "moved_flows": int(per_flow["moved"].sum()),
        "broken": int((~per_flow["completed"]).sum()),
        "completed_pct": round(100.0 * per_flow["completed"].mean(), 2) if len(per_flow)
        else math.nan,
        "pcc_pct": round(100.0 * (len(observed) - moved) / len(observed), 2) if len(observed)
        else math.nan,
        "throughput_bps_mean": float(done["throughput_bps"].mean()) if len(done) else math.nan,
        "invalid": sum(int(d.get("invalid", 0)) for d in dumps.values() if d) if dumps
        else pd.NA,
        "dropped": sum(int(d.get("dropped", 0)) for d in dumps.values() if d) if dumps
        else pd.NA,
        "nf_flows": _nf_counts(data),
        "nf_flows_by_phase": " | ".join(phases),
        "events": ";".join(f"{t:g}s {name}" + (f"({detail})" if detail else "")
                           for t, name, detail in evs),
        "event_times": ";".join(f"{t:g}" for t, _, _ in evs),
        "dip_depth_pct": max((d["depth_pct"] for d in measured), default=math.nan),
        "dip_s": max((d["dip_s"] for d in measured), default=math.nan),
        "dips": " | ".join(f"{d['event']}: " + (f"{d['depth_pct']:g}% {d['dip_s']}s "
                                                 f"({d['flows']} flows)" if d["flows"] and
                                                 not math.isnan(d["depth_pct"]) else "-")
                           for d in dips),
        "nf_detect_s": max((s for s in (detections or {}).values() if s is not None),
                           default=math.nan),
        "nf_detections": ";".join(f"{nf}:" + (f"{s:g}" if s is not None else "not detected")
                                  for nf, s in sorted((detections or {}).items(),
                                                      key=lambda kv: nf_sort_key(kv[0]))),
        "controller_restore_s": max((o["agents_s"] for o in outages if "agents_s" in o),
                                    default=math.nan),
        "controller_outages": ";".join(_outage_text(o) for o in outages),
        "lb_fast_pct": _fast_pct(lb_counts),
        "missing_dumps": ";".join(sorted((n for n, d in dumps.items() if not d),
                                         key=nf_sort_key)),
        "unmatched_entries": _unaccounted(flows_df, dumps) if nf_dumps is not None else pd.NA,
        "status": status,
    }
    return pd.DataFrame([row], columns=SUMMARY_COLUMNS)


# --- output ------------------------------------------------------------------------------

def write_results(run_dir, flows_df: pd.DataFrame, summary_df: pd.DataFrame) -> Tuple[Path, Path]:
    """Write flows.csv and summary.csv into run_dir (created if needed); return their paths."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    flows_path, summary_path = out / "flows.csv", out / "summary.csv"
    flows_df.to_csv(flows_path, index=False)
    summary_df.to_csv(summary_path, index=False)
    return flows_path, summary_path


def read_flows(path) -> pd.DataFrame:
    """Read a flows.csv back with its types (empty strings stay empty strings; ``completed``
    is nullable: empty for observed rows). A file written before ``origin`` and
    ``related_packets`` existed reads as planned rows without related packets."""
    df = pd.read_csv(path, keep_default_na=False, na_values={
        "client_port": [""], "bytes": [""], "throughput_bps": [""], "end_s": [""],
        "start_s": [""], "duration_s": [""]})
    df["client_port"] = df["client_port"].astype("Int64")
    df["moved"] = df["moved"].astype(str).str.lower().eq("true")
    df["completed"] = df["completed"].astype(str).str.lower().map(
        {"true": True, "false": False}).astype("boolean")
    if "origin" not in df:
        df.insert(df.columns.get_loc("role"), "origin", "planned")
    if "related_packets" not in df:
        df.insert(df.columns.get_loc("nf_bytes"), "related_packets", 0)
    if "app" not in df:
        df.insert(df.columns.get_loc("role") + 1, "app",
                  df["role"].map(lambda r: "" if r == "observed" else "iperf3"))
    for col in ("origin", "app", "nf_first", "nfs_seen", "packets_by_nf", "invalid_by_nf", "error"):
        df[col] = df[col].astype(str)
    df["origin"] = df["origin"].replace("", "planned")
    return df


def format_summary(summary_df: pd.DataFrame) -> str:
    """A one-screen table: the counts per run, then each run's NF split by phase and events."""
    if summary_df is None or len(summary_df) == 0:
        return "(no runs)"
    table = summary_df[["scenario", "mode", "run_id", "flows", "moved", "moved_unexpected",
                        "broken", "pcc_pct", "completed_pct", "throughput_bps_mean"]].copy()
    table["Mbit/s"] = (table.pop("throughput_bps_mean") / 1e6).round(2)
    table = table.rename(columns={"pcc_pct": "PCC %", "completed_pct": "done %",
                                  "moved_unexpected": "moved*"})
    lines = [table.to_string(index=False, na_rep="-"),
             "(moved*: moved connections that were not on an NF killed during the run)"]
    for r in summary_df.itertuples(index=False):
        lines.append(f"{r.scenario}/{r.mode}/{r.run_id}:")
        lines.append(f"  events: {r.events or '-'}")
        lines.append(f"  flows per NF by start: {r.nf_flows_by_phase}")
        unplanned, apps = getattr(r, "observed_unplanned", None), getattr(r, "apps", None)
        if _num(unplanned) is not None:
            lines.append(f"  connections: {r.connections}, {r.observed} seen at an NF, "
                         f"{int(unplanned)} of no planned flow or app"
                         + (f"; app connections: {int(apps)}" if _num(apps) else ""))
        detected = getattr(r, "nf_detections", None)
        if isinstance(detected, str) and detected:
            lines.append(f"  NFs killed, detected failed after (s): {detected}")
        outages = getattr(r, "controller_outages", None)
        if isinstance(outages, str) and outages:
            lines.append(f"  controller killed, back after: {outages}")
        if isinstance(r.missing_dumps, str) and r.missing_dumps:
            lines.append(f"  missing NF dumps: {r.missing_dumps}")
    return "\n".join(lines)
