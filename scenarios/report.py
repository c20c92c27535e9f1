"""Results of a run, built from what the run collected (pure functions, pandas).

Inputs:

- ``meta``: ``{"scenario", "mode", "run_id"}``;
- ``planned``: the flows the scenario started, each a mapping with ``flow_id, client, server,
  client_ip, server_ip, server_port, start_s, duration_s, proto`` (``tcp`` | ``udp``); the triple
  ``(client_ip, server_ip, server_port)`` must be unique in a run (one iperf3 server per port);
- ``iperf``: ``{flow_id: iperf3 -J document}`` (see :func:`load_iperf_json`; missing = no output);
- ``nf_dumps``: ``{nf name: agents.nf dump document}``, ``None`` for an NF whose dump is missing;
- ``events``: ``[(time_s, name, detail)]``, times on the same clock as ``start_s``.

A connection is matched to its flow by (client ip, server ip, server port), in either direction
of the NF's per-direction entries; its client port tells connections apart. iperf3 opens a
control connection (TCP) and data connections (TCP or UDP): the data ones are those whose
client port is in ``start.connected[].local_port``; a TCP connection not listed there is the
control connection. Every flow gets one control row and one row per data stream, with empty
NF columns for a connection no NF saw.

``nf_first``: NF dumps carry no timestamps, so the first NF is inferred. With
``nf_conntrack_tcp_loose=0`` only the NF that saw a TCP connection's SYN accepts its packets;
an NF that got it later counts every packet as invalid. So ``nf_first`` is the NF with the most
accepted (packets - invalid) packets, ties and all-invalid cases broken by most packets, then by
name. For UDP (conntrack picks it up anywhere) this is the NF with the most packets.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

FLOW_COLUMNS = [
    "scenario", "mode", "run_id", "flow_id", "role", "proto", "flow_proto",
    "client", "server", "client_ip", "server_ip", "client_port", "server_port",
    "start_s", "duration_s", "end_s",
    "nf_first", "nfs_seen", "packets_by_nf", "invalid_by_nf", "packets", "invalid_packets",
    "nf_bytes", "moved", "bytes", "throughput_bps", "completed", "error",
]

SUMMARY_COLUMNS = [
    "scenario", "mode", "run_id", "flows", "connections", "observed", "moved", "moved_unexpected",
    "moved_flows",
    "broken", "completed_pct", "pcc_pct", "throughput_bps_mean", "invalid", "dropped",
    "nf_flows", "nf_flows_by_phase", "events", "event_times", "missing_dumps",
    "unmatched_entries",
]

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


# --- NF entries --------------------------------------------------------------------------

def nf_entries(nf_dumps: Mapping[str, Optional[Mapping[str, Any]]]) -> pd.DataFrame:
    """All per-direction NF entries as one table (nf, src, dst, proto, sport, dport, ...)."""
    rows = []
    for nf, doc in (nf_dumps or {}).items():
        for f in (doc or {}).get("flows", []):
            rows.append({"nf": nf, "src": f["src"], "dst": f["dst"], "proto": str(f["proto"]),
                         "sport": int(f["sport"]), "dport": int(f["dport"]),
                         "packets": int(f["packets"]), "bytes": int(f["bytes"]),
                         "invalid": int(f.get("invalid", 0))})
    cols = ["nf", "src", "dst", "proto", "sport", "dport", "packets", "bytes", "invalid"]
    return pd.DataFrame(rows, columns=cols)


def match_connections(planned, nf_dumps) -> Tuple[Dict[Any, Dict[Tuple[str, int], Dict]], int]:
    """Group NF entries into connections of planned flows.

    Returns ({flow_id: {(proto, client_port): {nf: {"packets", "bytes", "invalid"}}}},
    number of NF entries that match no planned flow).
    """
    flows = _planned_list(planned)
    index = {(f["client_ip"], f["server_ip"], int(f["server_port"])): f["flow_id"]
             for f in flows}
    conns: Dict[Any, Dict[Tuple[str, int], Dict]] = {f["flow_id"]: {} for f in flows}
    unmatched = 0
    for e in nf_entries(nf_dumps).itertuples(index=False):
        if e.proto not in ("tcp", "udp"):
            unmatched += 1
            continue
        fid = index.get((e.src, e.dst, e.dport))
        cport = e.sport
        if fid is None:
            fid = index.get((e.dst, e.src, e.sport))
            cport = e.dport
        if fid is None:
            unmatched += 1
            continue
        per_nf = conns[fid].setdefault((e.proto, cport), {})
        acc = per_nf.setdefault(e.nf, {"packets": 0, "bytes": 0, "invalid": 0})
        acc["packets"] += e.packets
        acc["bytes"] += e.bytes
        acc["invalid"] += e.invalid
    return conns, unmatched


def first_nf(per_nf: Mapping[str, Mapping[str, int]]) -> str:
    """The NF that most likely saw the connection first (see the module docstring)."""
    if not per_nf:
        return ""
    return min(per_nf, key=lambda nf: (-(per_nf[nf]["packets"] - per_nf[nf]["invalid"]),
                                       -per_nf[nf]["packets"], nf_sort_key(nf)))


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


def build_flows(meta: Mapping[str, Any], planned, iperf: Mapping[Any, Any],
                nf_dumps: Mapping[str, Optional[Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per connection (columns FLOW_COLUMNS), every planned flow represented."""
    flows = _planned_list(planned)
    conns, _ = match_connections(flows, nf_dumps)
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
            packets = {nf: v["packets"] for nf, v in per_nf.items()}
            invalid = {nf: v["invalid"] for nf, v in per_nf.items() if v["invalid"]}
            nbytes, bps = res.streams.get(c, (None, None)) if conn_roles[c] == "data" \
                else (None, None)
            rows.append({
                "scenario": meta.get("scenario"), "mode": meta.get("mode"),
                "run_id": meta.get("run_id"), "flow_id": fid, "role": conn_roles[c],
                "proto": c[0], "flow_proto": fproto, "client": f["client"],
                "server": f["server"], "client_ip": f["client_ip"], "server_ip": f["server_ip"],
                "client_port": c[1], "server_port": int(f["server_port"]),
                "start_s": start, "duration_s": float(f["duration_s"]), "end_s": end,
                "nf_first": first_nf(per_nf),
                "nfs_seen": ";".join(sorted(per_nf, key=nf_sort_key)),
                "packets_by_nf": _fmt_counts(packets), "invalid_by_nf": _fmt_counts(invalid),
                "packets": sum(packets.values()), "invalid_packets": sum(invalid.values()),
                "nf_bytes": sum(v["bytes"] for v in per_nf.values()),
                "moved": len(per_nf) > 1,
                "bytes": nbytes, "throughput_bps": bps,
                "completed": res.completed, "error": res.error,
            })
    df = pd.DataFrame(rows, columns=FLOW_COLUMNS)
    df["client_port"] = df["client_port"].astype("Int64")
    for col in ("bytes", "throughput_bps", "end_s", "start_s", "duration_s"):
        df[col] = df[col].astype("float64")
    for col in ("moved", "completed"):
        df[col] = df[col].astype(bool)
    for col in ("packets", "invalid_packets", "nf_bytes", "server_port"):
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


def build_summary(flows_df: pd.DataFrame, events=(), meta: Optional[Mapping[str, Any]] = None,
                  nf_dumps: Optional[Mapping[str, Optional[Mapping]]] = None,
                  planned=None) -> pd.DataFrame:
    """One row per run (columns SUMMARY_COLUMNS).

    flows = planned flows (iperf3 runs); connections / observed = rows / rows seen at an NF;
    moved = connections seen at more than one NF; moved_unexpected = those of them that did not
    start on an NF killed during the run (whose connections must move);
    moved_flows = flows with a moved connection;
    broken = flows not completed; pcc_pct = 100 * (observed - moved) / observed;
    nf_flows = data connections per nf_first; nf_flows_by_phase splits them by the flow's start
    time at each event time ("<10s: nf1:4;nf2:3 | >=10s: nf1:1;nf4:2").
    Given the dumps, invalid / dropped are the NFs' counters and missing_dumps the NFs whose dump
    is None; given the planned flows, unmatched_entries counts NF entries of no planned flow.
    """
    meta = dict(meta or {})
    for key in ("scenario", "mode", "run_id"):
        if key not in meta:
            meta[key] = flows_df[key].iloc[0] if len(flows_df) else ""
    evs = normalize_events(events)
    df = flows_df
    per_flow = df.groupby("flow_id", sort=False).agg(completed=("completed", "all"),
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
    row = {
        "scenario": meta["scenario"], "mode": meta["mode"], "run_id": meta["run_id"],
        "flows": len(per_flow), "connections": len(df), "observed": len(observed),
        "moved": moved, "moved_unexpected": moved_unexpected, "moved_flows": int(per_flow["moved"].sum()),
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
        "missing_dumps": ";".join(sorted((n for n, d in dumps.items() if not d),
                                         key=nf_sort_key)),
        "unmatched_entries": match_connections(planned, dumps)[1] if planned is not None
        else pd.NA,
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
    """Read a flows.csv back with its types (empty strings stay empty strings)."""
    df = pd.read_csv(path, keep_default_na=False, na_values={
        "client_port": [""], "bytes": [""], "throughput_bps": [""], "end_s": [""]})
    df["client_port"] = df["client_port"].astype("Int64")
    for col in ("moved", "completed"):
        df[col] = df[col].astype(str).str.lower().eq("true")
    for col in ("nf_first", "nfs_seen", "packets_by_nf", "invalid_by_nf", "error"):
        df[col] = df[col].astype(str)
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
        if isinstance(r.missing_dumps, str) and r.missing_dumps:
            lines.append(f"  missing NF dumps: {r.missing_dumps}")
    return "\n".join(lines)
