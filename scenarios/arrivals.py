"""Open-loop arrivals of short TCP connections: when they start, how large they are, and
what became of each (the planning is pure: a seed gives the same plan in every LB mode).

A scenario's ``[[arrivals]]`` (``ArrivalBatch``) opens connections from the client hosts to
the size servers on the server hosts (``agents.loadgen``) as a Poisson process of
``rate_cps`` new connections per second over ``duration_s``. Each connection asks its server
for ``size`` bytes, drawn from a size distribution (``SizeDist``): a fixed size, or an
empirical CDF, either one shipped here (``scenarios/cdf/``: ``websearch``, the DCTCP paper's
web-search cluster; ``datamining``, the VL2 paper's data-mining cluster; their sources are in
the files) or a file of the same format (``size_bytes cumulative_fraction`` per line, ``#``
comments). The server sends the bytes and closes; the client reads to the end and closes:
both FINs. Each connection's client port is planned here (one range per client host, below
the kernel's ephemeral ports), so its client-side outcome (completed, bytes, duration, error)
joins the NFs' per-connection counters by 5-tuple, like the iperf3 flows and the apps.

Sizes above ``max_bytes`` are cut to it (the data-center CDFs have tails of 30 MB and 1 GB
that an emulated 2-core testbed cannot carry at hundreds of connections per second).
"""
from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from pathlib import Path

from agents.loadgen import APP as APP_NAME   # the ``app`` of their records in flows.csv
from topo.testbed import ip_of

CDF_DIR = Path(__file__).resolve().parent / "cdf"
BUILTIN_SIZES = tuple(sorted(p.stem for p in CDF_DIR.glob("*.txt")))
ARRIVAL_PORT = 7100                      # the size server's port on every server host
FIRST_PORT, LAST_PORT = 10000, 19999     # client ports of arrivals, per client host
MAX_RATE_CPS = 5000.0
MAX_DURATION_S = 3600.0
DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_TIMEOUT_S = 30.0


class SizeError(ValueError):
    """A size distribution that cannot be used (the message says why)."""


@dataclass(frozen=True)
class SizeDist:
    """Flow sizes in bytes: the inverse of a piecewise-linear CDF through ``points``
    (``(size, cumulative fraction)``, both non-decreasing, the last fraction 1), cut at
    ``max_bytes``. A fixed size is the single point ``(n, 1.0)``."""
    name: str
    points: tuple[tuple[float, float], ...]
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def parse(cls, spec: str, max_bytes: int = DEFAULT_MAX_BYTES) -> "SizeDist":
        """``"fixed:20000"``, a shipped CDF's name (``BUILTIN_SIZES``) or a CDF file's path."""
        spec = str(spec).strip()
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise SizeError(f"max_bytes must be a whole number of bytes >= 1, got {max_bytes!r}")
        if spec.startswith("fixed:"):
            try:
                n = int(spec[len("fixed:"):])
            except ValueError:
                n = 0
            if n < 1:
                raise SizeError(f"sizes {spec!r}: fixed:N takes a whole number of bytes >= 1")
            return cls(spec, ((float(n), 1.0),), max_bytes)
        path = CDF_DIR / f"{spec}.txt" if spec in BUILTIN_SIZES else Path(spec)
        try:
            text = path.read_text()
        except OSError as e:
            raise SizeError(f"sizes {spec!r}: not fixed:N, nor one of "
                            f"{', '.join(BUILTIN_SIZES)}, nor a readable CDF file "
                            f"({e.strerror or e})") from None
        return cls(spec, parse_cdf(text, str(path)), max_bytes)

    def sample(self, u: float) -> int:
        """The size at quantile ``u`` in [0, 1) (inverse transform sampling)."""
        pts = self.points
        if len(pts) == 1:
            return min(int(pts[0][0]), self.max_bytes)
        fracs = [f for _, f in pts]
        i = bisect.bisect_right(fracs, u)
        if i >= len(pts):
            size = pts[-1][0]
        elif i == 0:
            size = pts[0][0]
        else:
            (x0, f0), (x1, f1) = pts[i - 1], pts[i]
            size = x0 + (x1 - x0) * (u - f0) / (f1 - f0) if f1 > f0 else x1
        return max(1, min(int(round(size)), self.max_bytes))

    def cdf(self, x: float) -> float:
        """P(size <= x) of the sizes ``sample`` draws (for tests and plots)."""
        if x >= self.max_bytes:
            return 1.0
        pts = self.points
        if len(pts) == 1:
            return 1.0 if x >= pts[0][0] else 0.0
        if x < pts[0][0]:
            return 0.0
        for (x0, f0), (x1, f1) in zip(pts, pts[1:]):
            if x < x1:
                return f0 + (f1 - f0) * (x - x0) / (x1 - x0) if x1 > x0 else f0
        return 1.0

    def mean(self) -> float:
        """The mean size in bytes (after the cut at ``max_bytes``)."""
        pts, cap = self.points, self.max_bytes
        if len(pts) == 1:
            return float(min(pts[0][0], cap))
        total = pts[0][1] * min(pts[0][0], cap)
        for (x0, f0), (x1, f1) in zip(pts, pts[1:]):
            if f1 <= f0:
                continue
            lo, hi = min(x0, cap), min(x1, cap)
            if x1 <= cap or x0 >= cap:
                total += (f1 - f0) * (lo + hi) / 2
            else:                             # the segment crosses the cut
                fc = f0 + (f1 - f0) * (cap - x0) / (x1 - x0)
                total += (fc - f0) * (x0 + cap) / 2 + (f1 - fc) * cap
        return total


def parse_cdf(text: str, where: str = "<string>") -> tuple[tuple[float, float], ...]:
    """The points of a CDF file: ``size cumulative_fraction`` per line (fraction 0..1 or
    percent 0..100 if any exceeds 1), both non-decreasing, ending at 1; ``#`` comments."""
    rows: list[tuple[float, float, int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            x, f = float(parts[0]), float(parts[-1])
        except (ValueError, IndexError):
            raise SizeError(f"{where}:{n}: expected 'size cumulative_fraction', got "
                            f"{line!r}") from None
        if len(parts) not in (2, 3) or not (math.isfinite(x) and math.isfinite(f)) or x < 0:
            raise SizeError(f"{where}:{n}: expected 'size cumulative_fraction' with a size "
                            f">= 0, got {line!r}")
        rows.append((x, f, n))
    if not rows:
        raise SizeError(f"{where}: no points (lines of 'size cumulative_fraction')")
    scale = 100.0 if max(f for _, f, _ in rows) > 1.0 else 1.0
    points = []
    for (x, f, n) in rows:
        f /= scale
        if not 0.0 <= f <= 1.0:
            raise SizeError(f"{where}:{n}: fraction {f * scale:g} is outside 0..1 (or 0..100)")
        if points and (x < points[-1][0] or f < points[-1][1]):
            raise SizeError(f"{where}:{n}: sizes and fractions must not decrease "
                            f"({points[-1][0]:g} {points[-1][1]:g} then {x:g} {f:g})")
        points.append((x, f))
    if abs(points[-1][1] - 1.0) > 1e-9:
        raise SizeError(f"{where}: the last fraction must be 1 (or 100), got "
                        f"{points[-1][1] * scale:g}")
    return tuple(points)


@dataclass(frozen=True)
class ArrivalBatch:
    """Poisson arrivals of ``rate_cps`` connections per second from ``start_s`` for
    ``duration_s``, sizes from ``sizes`` (``SizeDist.parse``), each given ``timeout_s``;
    the server holds each connection idle for ``hold_s`` before it answers (long-lived,
    idle connections: with a rate R, about R * hold_s are open at once)."""
    rate_cps: float
    start_s: float
    duration_s: float
    sizes: str = "websearch"
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    hold_s: float = 0.0

    def __post_init__(self):
        if not 0 < self.rate_cps <= MAX_RATE_CPS:
            raise ValueError(f"rate_cps must be within 0..{MAX_RATE_CPS:g} (above 0), got "
                             f"{self.rate_cps!r}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be within 0..{MAX_DURATION_S:g} (above 0), got "
                             f"{self.duration_s!r}")
        if self.start_s < 0 or self.timeout_s <= 0:
            raise ValueError("start_s must be >= 0 and timeout_s above 0")
        if not 0 <= self.hold_s < self.timeout_s:
            raise ValueError(f"hold_s must be >= 0 and below timeout_s ({self.timeout_s:g}), "
                             f"got {self.hold_s!r}")
        self.dist()                                   # a bad size spec fails here

    def dist(self) -> SizeDist:
        return SizeDist.parse(self.sizes, self.max_bytes)

    def scaled(self, factor: float) -> "ArrivalBatch":
        """Times multiplied by ``factor``; the rate divided by it (the same connections)."""
        return ArrivalBatch(self.rate_cps / factor, self.start_s * factor,
                            self.duration_s * factor, self.sizes, self.max_bytes,
                            self.timeout_s * factor, self.hold_s * factor)

    @property
    def end_s(self) -> float:
        """When its last connection should have ended (the timeout bounds a slow one)."""
        return self.start_s + self.duration_s + self.hold_s + min(self.timeout_s, 10.0)


@dataclass(frozen=True)
class Arrival:
    """One planned connection of an arrival batch."""
    conn_id: str
    batch: int
    client: str
    server: str
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    start_s: float
    size: int
    timeout_s: float
    hold_s: float = 0.0

    def plan_line(self, origin: float = 0.0) -> dict:
        """What the client host's generator needs (``agents.loadgen``'s plan format), its
        time counted from ``origin`` (when the generator starts)."""
        return {"conn_id": self.conn_id, "at": round(self.start_s - origin, 6),
                "server": self.server_ip,
                "port": self.server_port, "cport": self.client_port, "size": self.size,
                "hold": self.hold_s, "timeout": self.timeout_s}


def poisson_times(rate: float, duration: float, rng: random.Random) -> list[float]:
    """Arrival times in [0, duration) of a Poisson process of ``rate`` per second."""
    out, t = [], rng.expovariate(rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def plan_arrivals(batches, clients: list[str], servers: list[str], seed: int,
                  server_port: int = ARRIVAL_PORT) -> list[Arrival]:
    """Every batch's connections (same seed -> same plan), in start order, to the size
    servers' ``server_port``. Raises ``ValueError`` when a client host would run out of
    planned ports."""
    rng = random.Random(f"arrivals-{seed}")
    out: list[Arrival] = []
    next_port = {c: FIRST_PORT for c in clients}
    for b, batch in enumerate(batches):
        dist = batch.dist()
        for t in poisson_times(batch.rate_cps, batch.duration_s, rng):
            client, server = rng.choice(clients), rng.choice(servers)
            port = next_port[client]
            if port > LAST_PORT:
                raise ValueError(f"the arrivals plan more than {LAST_PORT - FIRST_PORT + 1} "
                                 f"connections from {client}: lower rate_cps or duration_s, "
                                 f"or add clients")
            next_port[client] = port + 1
            out.append(Arrival(f"n{len(out) + 1:05d}", b, client, server, ip_of(client), port,
                               ip_of(server), server_port, round(batch.start_s + t, 6),
                               dist.sample(rng.random()), batch.timeout_s, batch.hold_s))
    out.sort(key=lambda a: a.start_s)
    return out


def outcomes(planned: list[Arrival], records: list[dict],
             t0_wall: float | None = None) -> list[dict]:
    """Every planned connection with its client-side outcome, as app records
    (``scenarios.report.APP_FIELDS``); one the generator did not report is not completed.
    Given ``t0_wall`` (the run's start, unix time), ``start_s`` is when the connection really
    opened (the generator's record), else its planned time."""
    by_id = {r.get("conn_id"): r for r in records}
    out = []
    for a in planned:
        r = by_id.get(a.conn_id, {})
        start = a.start_s
        if t0_wall is not None and isinstance(r.get("start"), (int, float)):
            start = round(r["start"] - t0_wall, 6)
        out.append({"app": APP_NAME, "conn_id": a.conn_id, "client": a.client,
                    "server": a.server, "client_ip": a.client_ip, "client_port": a.client_port,
                    "server_ip": a.server_ip, "server_port": a.server_port, "proto": "tcp",
                    "start_s": start, "duration_s": r.get("duration_s"),
                    "completed": bool(r.get("completed")), "bytes": r.get("bytes"),
                    "error": r.get("error", "") if r else "no outcome (generator did not "
                                                          "report it)"})
    return out
