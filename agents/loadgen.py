"""Open-loop short TCP connections at scale (stdlib only; one process per host).

Runs inside a Mininet host's network namespace::

    python -m agents.loadgen serve --port P [--port P2 ...]
    python -m agents.loadgen run --plan PLAN.jsonl --out OUT.jsonl [--summary SUMMARY.json]

``serve`` (until SIGTERM, then exit 0): every connection sends a 12-byte request, a
big-endian size N (8 bytes) and a hold H in milliseconds (4 bytes); the server keeps the
connection idle for H, sends N bytes, then its FIN, and closes once the client's FIN came
(or after ``--idle`` seconds without progress). One event loop serves thousands of
connections.

``run``: the plan (``scenarios.arrivals``) has one JSON object per line: ``conn_id``, ``at``
(seconds after the generator starts), ``server``, ``port``, ``cport`` (the local port to
bind), ``size`` (bytes asked for), ``hold`` (seconds the server waits first, default 0),
``timeout`` (seconds for the whole exchange). Each
connection opens at its time whatever the others do (open loop: a slow network does not
slow the arrivals), asks for its size, reads to the server's FIN, then closes: both FINs.
When the plan is done (or on SIGTERM: the connections still open are recorded as
interrupted) it appends one outcome record per planned connection to ``--out`` (JSON lines:
``app`` "arrivals", ``conn_id``, ``client_ip``, ``client_port``, ``server_ip``,
``server_port``, ``proto``, ``start``, ``end`` (unix times), ``duration_s``, ``completed``
(all N bytes then the FIN, in time), ``bytes``, ``error`` ('' or a short reason),
``connect_ms``, ``late_ms`` (how far behind its planned time it opened)), and writes
``--summary``: ``planned``, ``completed``, ``errors`` (reason -> count), ``max_concurrent``
(connections open at once), ``max_late_ms``, ``duration_s``. Exit 0 if every connection
completed, else 1; bad arguments or an unreadable plan: exit 2.
"""
from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HEADER = struct.Struct("!QI")          # size in bytes, hold in milliseconds
CHUNK = 65536
_ZEROS = memoryview(bytes(CHUNK))
APP = "arrivals"


class Stop(Exception):
    pass


def _on_term(signum, frame):
    raise Stop()


def raise_nofile() -> int:
    """Lift the open-file limit to the hard limit (thousands of sockets); the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


# ----------------------------------------------------------------------------- server

class _ServerConn:
    __slots__ = ("sock", "head", "left", "fin_sent", "eof", "seen")

    def __init__(self, sock: socket.socket, now: float):
        self.sock, self.head, self.left, self.seen = sock, b"", -1, now
        self.fin_sent = self.eof = False


def serve(ports: Sequence[int], idle: float = 60.0, ready=None) -> int:
    """Serve on every port of ``ports`` until SIGTERM (or ``Stop``); ``ready(ports)`` is
    called once listening."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    listeners = []
    for port in ports:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("0.0.0.0", port))
        lsock.listen(4096)
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, None)
        listeners.append(lsock)
    conns: Dict[int, _ServerConn] = {}
    if ready:
        ready([s.getsockname()[1] for s in listeners])
    next_sweep = time.monotonic() + 1.0
    held: list = []                       # (due, seq, conn): replies that wait for their hold
    seq = 0
    try:
        while True:
            wait = 0.5 if not held else max(0.0, min(0.5, held[0][0] - time.monotonic()))
            for key, ev in sel.select(timeout=wait):
                now = time.monotonic()
                if key.data is None:
                    _accept(key.fileobj, sel, conns, now)
                    continue
                c = key.data
                c.seen = now
                try:
                    if ev & selectors.EVENT_READ:
                        hold = _server_read(c, sel)
                        if hold is None:
                            _drop(sel, conns, c)
                            continue
                        if hold > 0:
                            seq += 1
                            heapq.heappush(held, (now + hold, seq, c))
                            c.seen = now + hold       # held, not idle: the sweep waits
                    if ev & selectors.EVENT_WRITE and not _server_write(c, sel):
                        _drop(sel, conns, c)
                except OSError:
                    _drop(sel, conns, c)
            now = time.monotonic()
            while held and held[0][0] <= now:
                c = heapq.heappop(held)[2]
                if c.sock.fileno() >= 0:
                    c.seen = now
                    sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            if now >= next_sweep:
                next_sweep = now + 1.0
                for c in [c for c in conns.values() if now - c.seen > idle]:
                    _drop(sel, conns, c)
    except (Stop, KeyboardInterrupt):
        return 0
    finally:
        for c in list(conns.values()):
            c.sock.close()
        for lsock in listeners:
            lsock.close()


def _accept(lsock, sel, conns, now) -> None:
    for _ in range(256):
        try:
            s, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:               # EMFILE and the like: let the loop breathe, not spin
            time.sleep(0.05)
            return
        s.setblocking(False)
        c = _ServerConn(s, now)
        conns[s.fileno()] = c
        sel.register(s, selectors.EVENT_READ, c)


def _server_read(c: _ServerConn, sel) -> Optional[float]:
    """None once the connection is over (the client's FIN after ours, or an error); else
    the seconds to hold the reply once the request is complete (0: now, or nothing new)."""
    try:
        data = c.sock.recv(CHUNK)
    except (BlockingIOError, InterruptedError):
        return 0.0
    if not data:                      # the client's FIN
        if c.fin_sent or c.left < 0:
            return None
        c.eof = True                  # (half-closed early: still send, then close)
        sel.modify(c.sock, selectors.EVENT_WRITE, c)
        return 0.0
    if c.left < 0:
        c.head += data
        if len(c.head) >= HEADER.size:
            c.left, hold_ms = HEADER.unpack(c.head[:HEADER.size])
            if hold_ms:
                return hold_ms / 1000.0       # the reply waits (the loop's timer list)
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    return 0.0


def _server_write(c: _ServerConn, sel) -> bool:
    """False once the connection is over (all sent and the client's FIN came first)."""
    while c.left > 0:
        try:
            n = c.sock.send(_ZEROS[:min(CHUNK, c.left)])
        except (BlockingIOError, InterruptedError):
            return True
        c.left -= n
    if not c.fin_sent:
        c.sock.shutdown(socket.SHUT_WR)
        c.fin_sent = True
        if c.eof:
            return False
        sel.modify(c.sock, selectors.EVENT_READ, c)
    return True


def _drop(sel, conns, c) -> None:
    try:
        sel.unregister(c.sock)
    except (KeyError, ValueError):
        pass
    conns.pop(c.sock.fileno(), None)
    c.sock.close()


# ----------------------------------------------------------------------------- client

class _Conn:
    __slots__ = ("plan", "sock", "t_open", "wall_open", "connected", "got", "rec")

    def __init__(self, plan: dict, sock: socket.socket, t_open: float, wall_open: float):
        self.plan, self.sock, self.t_open, self.wall_open = plan, sock, t_open, wall_open
        self.connected, self.got, self.rec = -1.0, 0, None


def _error(exc: BaseException, stage: str) -> str:
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if code else ""
    return f"{stage}: {name or type(exc).__name__}"


def load_plan(path: str) -> List[dict]:
    plan = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line)
                plan.append({"conn_id": str(p["conn_id"]), "at": float(p["at"]),
                             "server": str(p["server"]), "port": int(p["port"]),
                             "cport": int(p["cport"]), "size": int(p["size"]),
                             "hold": float(p.get("hold", 0.0)),
                             "timeout": float(p["timeout"])})
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a plan line ({e})") from None
    plan.sort(key=lambda p: p["at"])
    return plan


def run(plan: List[dict], clock=time.monotonic) -> tuple[List[dict], Dict[str, Any]]:
    """Open the planned connections on schedule; (records, summary)."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    t0, wall0 = clock(), time.time()
    open_: Dict[int, _Conn] = {}
    records: List[dict] = []
    i, peak, max_late = 0, 0, 0.0
    interrupted = False

    def finish(c: _Conn, error: str) -> None:
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        open_.pop(id(c), None)
        c.sock.close()
        now = clock()
        p = c.plan
        records.append({
            "app": APP, "conn_id": p["conn_id"], "client_ip": c.rec, "client_port": p["cport"],
            "server_ip": p["server"], "server_port": p["port"], "proto": "tcp",
            "start": c.wall_open, "end": c.wall_open + (now - c.t_open),
            "duration_s": round(now - c.t_open, 6), "completed": not error,
            "bytes": c.got, "error": error,
            "connect_ms": round((c.connected - c.t_open) * 1000, 3) if c.connected >= 0 else None,
            "late_ms": round(max(0.0, c.t_open - t0 - p["at"]) * 1000, 3)})

    try:
        while i < len(plan) or open_:
            now = clock()
            while i < len(plan) and plan[i]["at"] <= now - t0:
                p = plan[i]
                i += 1
                max_late = max(max_late, now - t0 - p["at"])
                try:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError as e:          # EMFILE, ENFILE: this one is recorded, not fatal
                    records.append({**_unopened(p), "start": wall0 + (now - t0),
                                    "error": _error(e, "socket")})
                    continue
                c = _Conn(p, s, now, wall0 + (now - t0))
                open_[id(c)] = c
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.setblocking(False)
                    s.bind(("0.0.0.0", p["cport"]))
                    err = s.connect_ex((p["server"], p["port"]))
                    if err not in (0, errno.EINPROGRESS):
                        raise OSError(err, os.strerror(err))
                    sel.register(s, selectors.EVENT_WRITE, c)
                except OSError as e:
                    finish(c, _error(e, "connect"))
                    continue
                peak = max(peak, len(open_))
            now = clock()
            wait = 0.05
            if i < len(plan):
                wait = min(wait, max(0.0, plan[i]["at"] - (now - t0)))
            for key, ev in sel.select(timeout=wait):
                c = key.data
                try:
                    if c.connected < 0:
                        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, os.strerror(err))
                        c.connected = clock()
                        c.rec = c.sock.getsockname()[0]
                        c.sock.send(HEADER.pack(c.plan["size"],
                                                int(round(c.plan.get("hold", 0.0) * 1000))))
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                        continue
                    while True:
                        try:
                            data = c.sock.recv(CHUNK)
                        except (BlockingIOError, InterruptedError):
                            break
                        if not data:       # the server's FIN: ours goes with the close
                            finish(c, "" if c.got == c.plan["size"] else
                                   f"short: {c.got} of {c.plan['size']} bytes")
                            break
                        c.got += len(data)
                except OSError as e:
                    finish(c, _error(e, "connect" if c.connected < 0 else "read"))
            now = clock()
            for c in [c for c in open_.values() if now - c.t_open > c.plan["timeout"]]:
                finish(c, "timeout: " + ("connect" if c.connected < 0 else
                                         f"read, {c.got} of {c.plan['size']} bytes"))
    except (Stop, KeyboardInterrupt):
        interrupted = True
        for c in list(open_.values()):
            finish(c, "interrupted")
    done = {r["conn_id"] for r in records}
    for p in plan:                      # never opened (interrupted before its time)
        if p["conn_id"] not in done:
            records.append({**_unopened(p), "error": "interrupted before its start"})
    errors: Dict[str, int] = {}
    for r in records:
        if r["error"]:
            reason = r["error"].split(",")[0].split(": ")[0] \
                if r["error"].startswith("short") else r["error"].split(",")[0]
            errors[reason] = errors.get(reason, 0) + 1
    summary = {"planned": len(plan), "completed": sum(r["completed"] for r in records),
               "errors": errors, "max_concurrent": peak,
               "max_late_ms": round(max_late * 1000, 3), "interrupted": interrupted,
               "duration_s": round(clock() - t0, 3)}
    return records, summary


def _unopened(p: dict) -> dict:
    """The record of a planned connection that never got a socket."""
    return {"app": APP, "conn_id": p["conn_id"], "client_ip": None, "client_port": p["cport"],
            "server_ip": p["server"], "server_port": p["port"], "proto": "tcp", "start": None,
            "end": None, "duration_s": None, "completed": False, "bytes": 0, "error": "",
            "connect_ms": None, "late_ms": None}


def _write_records(path: str, records: List[dict]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, "".join(json.dumps(r) + "\n" for r in records).encode())
    finally:
        os.close(fd)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m agents.loadgen",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="the size server")
    s.add_argument("--port", type=int, required=True, action="append",
                   help="a port to serve on (several: one listener each)")
    s.add_argument("--idle", type=float, default=60.0)
    r = sub.add_parser("run", help="open the planned connections")
    r.add_argument("--plan", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--summary")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    if a.cmd == "serve":
        bad = [p for p in a.port if not 0 < p < 65536]
        if bad:
            print(f"loadgen: --port must be 1..65535, got {bad[0]}", file=sys.stderr)
            return 2
        try:
            return serve(a.port, a.idle)
        except OSError as e:          # a port taken: say which, no traceback
            print(f"loadgen: cannot serve on {', '.join(map(str, a.port))}: {e}",
                  file=sys.stderr)
            return 1
    try:
        plan = load_plan(a.plan)
    except (OSError, ValueError, Stop) as e:
        print(f"loadgen: {e or 'stopped before the plan was read'}", file=sys.stderr)
        return 2
    records, summary = run(plan)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # what it measured is written whole
    _write_records(a.out, records)
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(summary, f)
    return 0 if summary["completed"] == summary["planned"] else 1


if __name__ == "__main__":
    sys.exit(main())
