"""Workloads of real applications in a scenario: what runs where, and the client commands.

A scenario's ``apps`` (``AppBatch``) start client programs from the client hosts against
servers on the server hosts (``agents.apps``, Debian's nginx and curl). Each client makes one
connection from a client port planned here, so its outcome (one JSON line, see
``agents.apps``) joins the NFs' per-connection counters by 5-tuple.

Kinds (the servers every server host runs are started once per run, ``SERVERS``):

- ``http_short``: curl fetches a small file from nginx;
- ``http_download``: curl fetches a large file that nginx paces (``?rate=``: curl's own
  ``--limit-rate`` lets the first megabytes through at once), a connection that lives across
  the scenario's events;
- ``http_keepalive``: several requests on one HTTP/1.1 connection with idle time between;
- ``halfclose``: the client sends its request and its FIN; the server pauses, then answers;
- ``udp_large``: UDP requests and replies larger than the MTU (IP fragments both ways); a
  request unanswered for a second is resent (twice at most), as DNS clients do: a datagram
  sent to an LB node that just died is lost before the controller notices;
- ``udp_probe``: UDP probes to a closed port; the server's ICMP port-unreachable errors must
  reach the client (a probe whose error does not come is sent again, twice at most).
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

from agents.apps import NGINX_FILES
from topo.testbed import ip_of

KINDS = ("http_short", "http_download", "http_keepalive", "halfclose", "udp_large",
         "udp_probe")
HTTP_PORT = 80
HALFCLOSE_PORT = 7000
UDP_PORT = 7001
CLOSED_PORT = 7009          # nothing listens there
FIRST_CLIENT_PORT = 30001   # apart from iperf3's client ports (20001..), below the
                            # kernel's ephemeral range (32768..), which other programs draw from
SMALL, LARGE = "small.bin", "large.bin"
SIZES = NGINX_FILES


@dataclass(frozen=True)
class AppBatch:
    """``count`` clients of ``kind``, the first at ``start_s``, the others over ``spread_s``;
    ``options`` tune the kind (see ``DEFAULTS``)."""
    kind: str
    count: int
    start_s: float
    spread_s: float = 0.0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown app kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        unknown = sorted(set(self.options) - set(DEFAULTS[self.kind]))
        if unknown:
            raise ValueError(f"app kind {self.kind}: unknown option(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(DEFAULTS[self.kind]) or 'none'})")


DEFAULTS: dict[str, dict] = {
    "http_short": {"timeout_s": 10.0},
    "http_download": {"rate": "100k", "timeout_s": 60.0},
    "http_keepalive": {"requests": 3, "idle_s": 8.0, "timeout_s": 60.0},
    "halfclose": {"pause_s": 4.0, "size": 20000, "timeout_s": 30.0},
    "udp_large": {"count": 15, "size": 4000, "reply_size": 3000, "interval_s": 1.0,
                  "timeout_s": 3.0, "retries": 2, "retry_after_s": 1.0},
    "udp_probe": {"count": 10, "interval_s": 1.0, "retries": 2, "retry_after_s": 1.0},
}
LARGE_BYTES = SIZES[LARGE]


def scaled(batch: AppBatch, factor: float) -> AppBatch:
    """The batch with its times multiplied by ``factor`` (idle and pause times too)."""
    opts = dict(batch.options)
    for name in ("idle_s", "pause_s", "interval_s"):
        if name in DEFAULTS[batch.kind]:
            opts[name] = round(_opt(batch, name) * factor, 3)
    return AppBatch(batch.kind, batch.count, batch.start_s * factor, batch.spread_s * factor,
                    opts)


def expected_s(batch: AppBatch) -> float:
    """About how long one client of the batch runs (when all goes well)."""
    o = {k: _opt(batch, k) for k in DEFAULTS[batch.kind]}
    if batch.kind == "http_download":
        rate = str(o["rate"]).lower()
        scale = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(rate[-1:], 1)
        return LARGE_BYTES / (float(rate.rstrip("kmg")) * scale)
    if batch.kind == "http_keepalive":
        return o["idle_s"] * (o["requests"] - 1) + 1.0
    if batch.kind == "halfclose":
        return o["pause_s"] + 1.0
    if batch.kind in ("udp_large", "udp_probe"):
        return o["count"] * o["interval_s"]
    return 1.0


def _opt(batch: AppBatch, name: str):
    return batch.options.get(name, DEFAULTS[batch.kind][name])


def plan_apps(batches, clients: list[str], servers: list[str], seed: int) -> list[dict]:
    """The app connections of a run (same seed -> same plan), in start order."""
    rng = random.Random(f"apps-{seed}")
    out = []
    for batch in batches:
        for j in range(batch.count):
            i = len(out)
            start = batch.start_s + (batch.spread_s * j / max(1, batch.count - 1)
                                     if batch.count > 1 else 0.0) + rng.uniform(0.0, 0.2)
            client, server = rng.choice(clients), servers[i % len(servers)]
            out.append({"conn_id": f"a{i + 1:03d}", "kind": batch.kind, "client": client,
                        "server": server, "client_ip": ip_of(client), "server_ip": ip_of(server),
                        "client_port": FIRST_CLIENT_PORT + i,
                        "server_port": _server_port(batch.kind),
                        "proto": "udp" if batch.kind.startswith("udp") else "tcp",
                        "start_s": round(start, 3),
                        "options": {k: _opt(batch, k) for k in DEFAULTS[batch.kind]}})
    out.sort(key=lambda a: a["start_s"])
    return out


def _server_port(kind: str) -> int:
    return {"halfclose": HALFCLOSE_PORT, "udp_large": UDP_PORT,
            "udp_probe": CLOSED_PORT}.get(kind, HTTP_PORT)


def server_options(planned: list[dict]) -> dict[str, dict]:
    """The options the shared servers take from the run's plan (its first batch of each
    kind: one half-close server and one UDP server per host serve every client)."""
    first = {}
    for app in planned:
        first.setdefault(app["kind"], app["options"])
    return {kind: first.get(kind, DEFAULTS[kind]) for kind in ("halfclose", "udp_large")}


def server_commands(www: str, run_dir: str, planned: list[dict]) -> dict[str, list[str]]:
    """The servers every server host runs: name -> command (``www``: the served files)."""
    py = [sys.executable, "-m", "agents.apps"]
    opts = server_options(planned)
    return {
        "nginx": py + ["nginx", "--root", www, "--port", str(HTTP_PORT), "--run-dir", run_dir,
                       "--no-files"],
        "halfclose": py + ["halfclose-server", "--port", str(HALFCLOSE_PORT),
                           "--pause", str(opts["halfclose"]["pause_s"]),
                           "--size", str(opts["halfclose"]["size"])],
        "udp": py + ["udp-server", "--port", str(UDP_PORT),
                     "--size", str(opts["udp_large"]["reply_size"])],
    }


def client_command(app: dict, out: str) -> list[str]:
    """The command a client host runs for planned app connection ``app``."""
    o, py = app["options"], [sys.executable, "-m", "agents.apps"]
    common = ["--cport", str(app["client_port"]), "--out", out]
    served = server_options([app])
    kind, server, port = app["kind"], app["server_ip"], str(app["server_port"])
    if kind == "http_short":
        return py + ["curl", "--url", f"http://{server}:{port}/{SMALL}", "--expect",
                     str(SIZES[SMALL]), "--timeout", str(o["timeout_s"])] + common
    if kind == "http_download":
        return py + ["curl", "--url", f"http://{server}:{port}/{LARGE}?rate={o['rate']}",
                     "--expect", str(LARGE_BYTES), "--timeout", str(o["timeout_s"])] + common
    if kind == "http_keepalive":
        return py + ["keepalive-client", "--server", server, "--port", port, "--path",
                     f"/{SMALL}", "--idle", str(o["idle_s"]), "--requests", str(o["requests"]),
                     "--timeout", str(o["timeout_s"])] + common
    if kind == "halfclose":
        return py + ["halfclose-client", "--server", server, "--port", port, "--expect",
                     str(served["halfclose"]["size"]), "--timeout", str(o["timeout_s"])] + common
    if kind == "udp_large":
        return py + ["udp-client", "--server", server, "--port", port, "--count",
                     str(o["count"]), "--size", str(o["size"]), "--reply-size",
                     str(o["reply_size"]), "--interval", str(o["interval_s"]),
                     "--timeout", str(o["timeout_s"]), "--retries", str(o["retries"]),
                     "--retry-after", str(o["retry_after_s"])] + common
    return py + ["udp-probe", "--server", server, "--port", port, "--count", str(o["count"]),
                 "--interval", str(o["interval_s"]), "--retries", str(o["retries"]),
                 "--retry-after", str(o["retry_after_s"])] + common


def outcomes(planned: list[dict], records: list[dict]) -> list[dict]:
    """Every planned app connection with its client-side outcome (``report``'s app records);
    a connection whose client wrote no outcome is not completed."""
    by_port = {int(r["client_port"]): r for r in records if "client_port" in r}
    out = []
    for a in planned:
        r = by_port.get(a["client_port"], {})
        start, end = r.get("start"), r.get("end")
        out.append({"app": a["kind"], "conn_id": a["conn_id"], "client": a["client"],
                    "server": a["server"], "client_ip": a["client_ip"],
                    "client_port": a["client_port"], "server_ip": a["server_ip"],
                    "server_port": a["server_port"], "proto": a["proto"],
                    "start_s": a["start_s"],
                    "duration_s": (end - start) if start is not None and end is not None
                    else None,
                    "completed": bool(r.get("completed")), "bytes": r.get("bytes"),
                    "error": r.get("error", "") if r else "no outcome (client did not finish)"})
    return out
