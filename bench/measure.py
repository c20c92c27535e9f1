"""Pure helpers of the testbed benchmark: parse what the tools and the system report and
turn it into figures. No I/O beyond reading the given text; every function is tested.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence


class ParseError(ValueError):
    """A tool's or the system's output is not what the benchmark expects."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def connect_times(doc: Mapping) -> tuple[list[float], int]:
    """Connect times (ms) of a ``connect`` tool result, and how many connects failed."""
    try:
        samples = doc["samples"]
    except (KeyError, TypeError):
        raise ParseError("not a connect result: no 'samples'") from None
    ms = [s["ms"] for s in samples if not s.get("error") and s.get("ms") is not None]
    return ms, len(samples) - len(ms)


def rate_outcome(docs: Iterable[Mapping]) -> dict:
    """Totals of one or more ``rate`` results: attempted, ok, errors (by reason), p50/p99 ms."""
    attempted, ok, reasons, ms = 0, 0, {}, []
    for doc in docs:
        try:
            conns = doc["conns"]
        except (KeyError, TypeError):
            raise ParseError("not a rate result: no 'conns'") from None
        for t_start, sport, dst, took, error in conns:
            attempted += 1
            if error:
                reasons[error] = reasons.get(error, 0) + 1
            else:
                ok += 1
                ms.append(took)
    return {"attempted": attempted, "ok": ok, "errors": attempted - ok, "reasons": reasons,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)}


def best_rate(steps: Sequence[tuple[float, int]]) -> float:
    """The highest rate of a ramp, in the order tried, that had 0 errors before the first
    step with errors; 0 when even the first step had errors."""
    best = 0.0
    for rate, errors in steps:
        if errors:
            break
        best = max(best, rate)
    return best


def restore_time(arrivals: Mapping[str, Sequence[Sequence[float]]], t_kill: float,
                 gap_s: float) -> dict:
    """How long after ``t_kill`` every live probe flow forwards again.

    ``arrivals`` maps a flow to its ``(seq, t_arrival, ...)`` records. A flow is live when it
    had an arrival before ``t_kill``. Its outage is its last inter-arrival gap longer than
    ``gap_s`` that ends after ``t_kill``; the flow is restored at that gap's end (at once when it
    had no such gap). Returns ``restore_s`` (the latest restoration, ``inf`` when a live flow
    never came back), ``max_gap_s``, the numbers of live, interrupted and lost flows, and the
    probes lost (missing sequence numbers) over all flows.
    """
    worst, max_gap, live, hit, lost_flows, lost_probes = 0.0, 0.0, 0, 0, 0, 0
    for records in arrivals.values():
        times = sorted(r[1] for r in records)
        if not times or times[0] >= t_kill:
            continue
        live += 1
        seqs = {int(r[0]) for r in records}
        lost_probes += max(seqs) - min(seqs) + 1 - len(seqs)
        if times[-1] < t_kill:
            lost_flows += 1
            worst = math.inf
            continue
        restored = None
        for a, b in zip(times, times[1:]):
            if b > t_kill and b - a > gap_s:
                max_gap = max(max_gap, b - a)
                restored = b
        if restored is not None:
            hit += 1
            worst = max(worst, restored - t_kill)
    return {"restore_s": worst, "max_gap_s": max_gap, "live_flows": live,
            "interrupted_flows": hit, "lost_flows": lost_flows, "lost_probes": lost_probes}


def iperf_bps(doc: Mapping) -> float:
    """Received bits/s of an iperf3 ``-J`` client result (TCP or UDP)."""
    if not isinstance(doc, Mapping):
        raise ParseError("not an iperf3 result")
    if doc.get("error"):
        raise ParseError(f"iperf3 error: {doc['error']}")
    end = doc.get("end") or {}
    for key in ("sum_received", "sum"):
        value = (end.get(key) or {}).get("bits_per_second")
        if value is not None:
            return float(value)
    raise ParseError("iperf3 result has no end.sum_received or end.sum")


_PORT_RX = re.compile(r"port\s+\"?(\w+)\"?:\s*rx pkts=(\d+)")


def ovs_port_rx(text: str, port: int | str) -> int:
    """Received packets of one port in ``ovs-ofctl dump-ports`` output."""
    for name, pkts in _PORT_RX.findall(text):
        if name == str(port):
            return int(pkts)
    raise ParseError(f"port {port} not in ovs-ofctl dump-ports output")


def rss_bytes(status: str) -> int:
    """VmRSS from the text of ``/proc/<pid>/status``, in bytes."""
    m = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.M)
    if not m:
        raise ParseError("no VmRSS line in the process status")
    return int(m.group(1)) * 1024


def first_use(conns: Sequence[Sequence], client_ip: str, nf_flows: Iterable[Mapping]) -> float | None:
    """When (``time.monotonic()``) the first connection of a ``rate`` result that went
    through the NF whose dump flows are ``nf_flows`` was established; None if none did.

    A connection is known by (client_ip, its source port, server port): a source port may
    be reused towards another server port. The NF's dump lists each direction of a flow with
    its own src/sport.
    """
    seen = set()
    for f in nf_flows:
        if f.get("proto") not in (6, "tcp"):
            continue
        if f.get("src") == client_ip:
            seen.add((int(f["sport"]), int(f["dport"])))
        elif f.get("dst") == client_ip:
            seen.add((int(f["dport"]), int(f["sport"])))
    times = [t_start + took / 1000 for t_start, sport, dst, took, error in conns
             if not error and took is not None
             and (sport, int(str(dst).rsplit(":", 1)[1])) in seen]
    return min(times) if times else None


def top_frames(collapsed: str, n: int = 15) -> tuple[int, list[tuple[float, str]], list[tuple[float, str]]]:
    """From py-spy's raw (collapsed-stack) output: the number of samples, and the ``n``
    frames with the most samples on top of the stack (self) and anywhere in it (inclusive),
    as (percent, frame)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k

    def top(d):
        return [(100 * c / total, f) for f, c in sorted(d.items(), key=lambda x: -x[1])[:n]]
    return total, (top(own) if total else []), (top(incl) if total else [])


def cpu_steal(stat: str) -> tuple[int, int]:
    """(all CPU time, the part stolen by the hypervisor) in clock ticks, from /proc/stat's
    aggregate ``cpu`` line: a virtual machine's CPUs run other guests for the steal time."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                ticks = [int(x) for x in fields[1:]]
            except ValueError:
                break
            if len(ticks) < 8:
                break
            # user nice system idle iowait irq softirq steal [guest guest_nice]: the guest
            # times are already counted in user and nice
            return sum(ticks[:8]), ticks[7]
    raise ParseError("no aggregate cpu line with a steal field in /proc/stat")


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time stolen between two ``cpu_steal`` readings (NaN if none passed)."""
    total = after[0] - before[0]
    return (after[1] - before[1]) / total if total > 0 else math.nan
