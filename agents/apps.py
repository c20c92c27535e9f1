"""Real-application workloads for the ``real-traffic`` scenario (stdlib only).

Each subcommand runs as one process inside a Mininet host's network namespace::

    python -m agents.apps SUBCOMMAND [flags]

Servers (run until killed; SIGTERM exits 0 promptly):

``halfclose-server --port P [--pause S] [--size N] [--out FILE]``
    TCP, one thread per connection: read until EOF (the client's FIN: the connection is now
    half-closed), sleep S seconds (default 1.0), send N bytes (default 100000), close. With
    ``--out`` one record per connection is appended (app ``halfclose-server``: ``peer_ip``,
    ``peer_port``, ``accepted_at``, ``eof_at``, ``send_start``, ``end``, ``bytes_in``,
    ``bytes_out``, ``completed``, ``error``).
``udp-server --port P [--size N]``
    For each datagram, send N bytes (default 3000: more than a 1500-byte MTU, so IP fragments
    the reply) back to its sender; the first 12 bytes echo the request's header.
``nginx --root DIR --port P --run-dir DIR [--keepalive-timeout S] [--no-files]``
    Writes ``RUN/nginx.conf`` of :func:`nginx_conf` into the run dir (pid, logs and temp paths
    all there; ``daemon off``), creates the served files of :func:`make_files` in the root (unless
    ``--no-files``), then execs ``nginx -p RUN/ -e RUN/error.log -c RUN/nginx.conf`` in the
    foreground: the process *is* the nginx master (SIGTERM: fast shutdown). The access log
    ``RUN/access.log`` has ``conn=$connection req=$connection_requests`` per request. A query
    ``?rate=200k`` paces that response server-side (nginx ``limit_rate``, bytes per second).

Clients (each appends exactly ONE outcome record to ``--out``, then exits 0 if completed else 1;
bad arguments: argparse error, exit 2). Local ports are bound with SO_REUSEADDR (TCP); a local
port of 0 picks any port (the record gives the one used):

``halfclose-client --server IP --port P --cport C [--request-size N] [--expect N]``
``--timeout T --out FILE``
    Connect from local port C, send N request bytes (default 100), ``shutdown(SHUT_WR)``, read
    the response until EOF. Completed: EOF before the deadline T (seconds from start, the whole
    exchange) and, with ``--expect N``, exactly N bytes. Extra fields: ``sent``, ``expect``,
    ``fin_at``, ``first_byte_at``, ``wait_s`` (first response byte minus our FIN).
``keepalive-client --server IP --port P --cport C --path /x --idle S --requests K``
``--timeout T --out FILE``
    HTTP/1.1 over ONE TCP connection: GET, read the full response (Content-Length or chunked),
    sleep S, GET again, K requests. T is the timeout of the connect and of each response.
    Completed: K responses, all 200 and complete, on that one connection. ``bytes`` counts body
    bytes. Extra fields: ``path``, ``requests``, ``responses``, ``statuses``, ``idle``.
``udp-client --server IP --port P --cport C --count K --size N --reply-size M --interval I``
``--timeout T [--retries R --retry-after A] --out FILE``
    From local port C, send K datagrams of N bytes (header: magic, session id, sequence number;
    DF never set, so the kernel fragments datagrams larger than the MTU) every I seconds while
    receiving replies; a reply counts if it echoes our session and a sequence number we sent,
    is M bytes long and arrives within T of its datagram. Ends when every reply arrived or T after
    the last send. A request unanswered after A seconds is resent, up to R times (as a DNS
    client retries; default no retry). Completed: every reply arrived. Extra fields: ``count``,
    ``size``, ``retries``, ``resent``,
    ``reply_size``, ``sent`` (first sends), ``received``, ``late``, ``bad``, ``missing`` (first 20 sequence
    numbers), ``rtt_avg_ms``, ``rtt_max_ms``; ``bytes`` counts the replies' bytes.
``udp-probe --server IP --port P --cport C --count K --interval I [--timeout T]``
``[--retries R --retry-after A] --out FILE``
    Connected UDP socket with IP_RECVERR to a port where nothing listens: send K probes every I
    seconds, read the ICMP errors from the error queue (MSG_ERRQUEUE) until every probe has its
    error or T (default 2.0) after the last probe; probes whose error did not come within A
    seconds are sent again, up to R times (as traceroute sends several probes). Completed:
    every probe's error came. Extra fields: ``count``, ``sent``, ``retries``, ``resent``,
    ``errors`` (probes answered by an ICMP port unreachable), ``other_errors`` (any other entry
    of the error queue), ``error_from`` (the ICMP senders' addresses). The kernel rate-limits
    the ICMP errors a host sends on non-loopback devices (``net.ipv4.icmp_ratelimit``, 1000 ms
    per peer with a burst of 6): set it to 0 in the server's netns, or probe once a second.
``curl --url URL --cport C [--limit-rate R] [--expect N] --timeout T --out FILE``
    Runs Debian's ``curl`` (see :func:`curl_command`) with ``--local-port C``, ``-o /dev/null``,
    ``--max-time T``, ``-w`` (http_code, size_download, local and remote address) and
    ``--limit-rate R`` when given. Completed: curl exit 0, HTTP 200, and N bytes with ``--expect``.
    Extra fields: ``url``, ``http_code``, ``exit_code``, ``limit_rate``, ``time_total``.
    curl binds ``--local-port`` without SO_REUSEADDR: a port still in TIME_WAIT from an earlier
    connection fails with exit 45 (``bind failed with errno 98``); C of 0 omits the option.

Every client takes ``--tag STR`` too (copied into the record as ``tag``). The outcome record is
one JSON line, appended with a single ``write`` on an ``O_APPEND`` descriptor::

    {"app": subcommand, "tag": str, "client_ip": local IP used, "client_port": int,
     "server_ip": str, "server_port": int, "proto": "tcp" | "udp", "start": unix time,
     "end": unix time, "completed": bool, "bytes": bytes received, "error": "" or short text,
     ...the tool's extra fields}

A client never dies with a traceback on network errors (nor on SIGTERM: it then records
``error: "terminated"`` with what it had counted so far).
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

# Linux constants the socket module of Python 3.11 does not export.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_RECVERR = 11
SO_EE_ORIGIN_ICMP = 2
ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3
_EE = struct.Struct("=IBBBBII")          # struct sock_extended_err, then the offender sockaddr_in

UDP_MAGIC = b"CLB1"
UDP_HEADER = struct.Struct("!4sII")      # magic, session id, sequence number
UDP_MAX = 65507

NGINX_FILES = {"small.bin": 1024, "large.bin": 2 * 1024 * 1024}
NGINX_KEEPALIVE_TIMEOUT = 300
SERVER_CONN_TIMEOUT = 300.0              # a halfclose-server connection idle that long is dropped
ERROR_MAX = 200


class Terminated(Exception):
    """Raised in the main thread by SIGTERM (clients record it)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _exit_zero(signum, frame):
    raise SystemExit(0)


# --- records ------------------------------------------------------------------------------

def append_record(path: str, record: Dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` with a single write (O_APPEND)."""
    line = (json.dumps(record, sort_keys=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def base_record(app: str, proto: str, server_ip: str, server_port: int, client_port: int,
                tag: str = "") -> Dict[str, Any]:
    return {"app": app, "tag": tag, "client_ip": "", "client_port": client_port,
            "server_ip": server_ip, "server_port": server_port, "proto": proto,
            "start": time.time(), "end": None, "completed": False, "bytes": 0, "error": ""}


def short_error(exc: BaseException, stage: str = "") -> str:
    """A short text for an exception: ``"connect: Connection refused"``, ``"recv: timeout"``."""
    if isinstance(exc, Terminated):
        text = "terminated"
    elif isinstance(exc, socket.timeout):
        text = "timeout"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = f"{stage}: {text}" if stage else text
    return text[:ERROR_MAX]


def failed(rec: Dict[str, Any], exc: BaseException, stage: str, error: str = "") -> None:
    """Record a client's failure at ``stage``; a termination (SIGTERM) goes on up."""
    rec["completed"] = False
    rec["error"] = error or short_error(exc, stage)
    if isinstance(exc, Terminated):
        raise exc


def route_source(ip: str) -> str:
    """The local address the kernel would use to reach ``ip`` ("" when there is no route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            return s.getsockname()[0]
    except OSError:
        return ""


def _local_addr(sock: socket.socket, server_ip: str, rec: Dict[str, Any]) -> None:
    try:
        ip, port = sock.getsockname()[:2]
    except OSError:
        ip, port = "0.0.0.0", 0
    if port:
        rec["client_port"] = port
    rec["client_ip"] = ip if ip != "0.0.0.0" else route_source(server_ip)


def run_client(rec: Dict[str, Any], body: Callable[[Dict[str, Any]], None], out: str,
               echo: bool = True) -> int:
    """Run ``body(rec)``; record any error; append the record to ``out``; 0 if completed."""
    old = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            body(rec)
        except Terminated as exc:
            rec["completed"], rec["error"] = False, short_error(exc)
        except Exception as exc:           # noqa: BLE001 - a client records, never crashes
            rec["completed"] = False
            rec["error"] = rec["error"] or short_error(exc)
        finally:
            for sig in old:                # a late signal must not cut the record short
                signal.signal(sig, signal.SIG_IGN)
        if rec["error"]:
            rec["completed"] = False
        rec["end"] = time.time()
        append_record(out, rec)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if echo:
        print(json.dumps(rec), flush=True)
    return 0 if rec["completed"] else 1


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("timed out")
    return left


def _tcp_client_socket(cport: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", cport))
    return sock


# --- half-close ---------------------------------------------------------------------------

def halfclose_client(server: str, port: int, cport: int, timeout: float,
                     request_size: int = 100, expect: Optional[int] = None,
                     rec: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Request, FIN, read until EOF (fills and returns ``rec``; raises on unexpected errors)."""
    rec = rec if rec is not None else base_record("halfclose-client", "tcp", server, port, cport)
    rec.update(sent=0, expect=expect, fin_at=None, first_byte_at=None, wait_s=None)
    deadline = time.monotonic() + timeout
    stage = "bind"
    sock = None
    try:
        sock = _tcp_client_socket(cport)
        _local_addr(sock, server, rec)
        stage = "connect"
        sock.settimeout(_remaining(deadline))
        sock.connect((server, port))
        _local_addr(sock, server, rec)
        stage = "send"
        sock.sendall(b"r" * request_size)
        rec["sent"] = request_size
        sock.shutdown(socket.SHUT_WR)
        rec["fin_at"] = time.time()
        stage = "recv"
        while True:
            sock.settimeout(_remaining(deadline))
            data = sock.recv(65536)
            if not data:
                break
            if rec["first_byte_at"] is None:
                rec["first_byte_at"] = time.time()
                rec["wait_s"] = round(rec["first_byte_at"] - rec["fin_at"], 6)
            rec["bytes"] += len(data)
        if expect is not None and rec["bytes"] != expect:
            rec["error"] = f"got {rec['bytes']} bytes, expected {expect}"
        else:
            rec["completed"] = True
    except (OSError, Terminated) as exc:
        timed_out = isinstance(exc, socket.timeout) and stage == "recv"
        failed(rec, exc, stage, short_error(exc, stage) + f" after {rec['bytes']} bytes"
               if timed_out else "")
    finally:
        if sock is not None:
            sock.close()
    return rec


def _halfclose_conn(conn: socket.socket, peer, pause: float, size: int, port: int,
                    out: Optional[str]) -> None:
    rec = {"app": "halfclose-server", "peer_ip": peer[0], "peer_port": peer[1],
           "server_port": port, "proto": "tcp", "accepted_at": time.time(), "eof_at": None,
           "send_start": None, "end": None, "bytes_in": 0, "bytes_out": 0,
           "completed": False, "error": ""}
    stage = "recv"
    try:
        conn.settimeout(SERVER_CONN_TIMEOUT)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            rec["bytes_in"] += len(data)
        rec["eof_at"] = time.time()
        time.sleep(pause)
        stage = "send"
        rec["send_start"] = time.time()
        chunk = b"R" * 65536
        left = size
        while left > 0:
            n = conn.send(chunk[:min(left, len(chunk))])
            left -= n
            rec["bytes_out"] += n
        rec["completed"] = True
    except OSError as exc:
        rec["error"] = short_error(exc, stage)
    finally:
        conn.close()
        rec["end"] = time.time()
        if out:
            try:
                append_record(out, rec)
            except OSError:
                pass


def halfclose_server(port: int, pause: float = 1.0, size: int = 100000,
                     out: Optional[str] = None, ready: Optional[Callable[[int], None]] = None
                     ) -> None:
    """Serve forever (a thread per connection)."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("", port))
    lsock.listen(256)
    if ready:
        ready(lsock.getsockname()[1])
    while True:
        try:
            conn, peer = lsock.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
            continue
        threading.Thread(target=_halfclose_conn, args=(conn, peer, pause, size, port, out),
                         daemon=True).start()


# --- HTTP keep-alive --------------------------------------------------------------------

class _Reader:
    """Buffered reads from a socket, each bounded by a deadline."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf, self.eof = sock, b"", False

    def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        self.sock.settimeout(_remaining(deadline))
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def until(self, marker: bytes, deadline: float, limit: int = 65536) -> Optional[bytes]:
        while marker not in self.buf:
            if len(self.buf) > limit or not self._fill(deadline):
                return None
        head, _, self.buf = self.buf.partition(marker)
        return head

    def exactly(self, n: int, deadline: float) -> int:
        """Consume up to ``n`` bytes (fewer only at EOF); returns how many."""
        got = 0
        while got < n:
            if not self.buf and not self._fill(deadline):
                break
            take = min(n - got, len(self.buf))
            self.buf = self.buf[take:]
            got += take
        return got

    def to_eof(self, deadline: float) -> int:
        got = len(self.buf)
        self.buf = b""
        while self._fill(deadline):
            got += len(self.buf)
            self.buf = b""
        return got


class HTTPError(Exception):
    pass


def read_http_response(reader: _Reader, deadline: float) -> Dict[str, Any]:
    """One response: ``{"status", "body_bytes", "complete", "close"}`` (raises on timeout)."""
    head = reader.until(b"\r\n\r\n", deadline)
    if head is None:
        if reader.eof and not reader.buf:
            raise HTTPError("server closed the connection")
        raise HTTPError("bad or truncated response header")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HTTPError(f"bad status line {lines[0][:60]!r}")
    status = int(parts[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    close = "close" in headers.get("connection", "").lower() or parts[0] == "HTTP/1.0"
    if status in (204, 304) or 100 <= status < 200:
        return {"status": status, "body_bytes": 0, "complete": True, "close": close}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = 0
        while True:
            size_line = reader.until(b"\r\n", deadline)
            if size_line is None:
                return {"status": status, "body_bytes": body, "complete": False, "close": True}
            try:
                n = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HTTPError("bad chunk size") from None
            if n == 0:
                while True:             # trailers, then the empty line
                    t = reader.until(b"\r\n", deadline)
                    if t is None or t == b"":
                        break
                return {"status": status, "body_bytes": body, "complete": t is not None,
                        "close": close}
            got = reader.exactly(n, deadline)
            body += got
            if got < n or reader.until(b"\r\n", deadline) is None:
                return {"status": status, "body_bytes": body, "complete": False, "close": True}
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HTTPError("bad Content-Length") from None
        got = reader.exactly(length, deadline)
        return {"status": status, "body_bytes": got, "complete": got == length,
                "close": close or got < length}
    body = reader.to_eof(deadline)            # delimited by the end of the connection
    return {"status": status, "body_bytes": body, "complete": True, "close": True}


def keepalive_client(server: str, port: int, cport: int, path: str, idle: float, requests: int,
                     timeout: float, rec: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    rec = rec if rec is not None else base_record("keepalive-client", "tcp", server, port, cport)
    rec.update(path=path, requests=requests, responses=0, statuses=[], idle=idle)
    request = (f"GET {path} HTTP/1.1\r\nHost: {server}:{port}\r\nUser-Agent: chainlb-apps\r\n"
               f"Accept: */*\r\nConnection: keep-alive\r\n\r\n").encode()
    stage = "bind"
    sock = None
    try:
        sock = _tcp_client_socket(cport)
        _local_addr(sock, server, rec)
        stage = "connect"
        sock.settimeout(timeout)
        sock.connect((server, port))
        _local_addr(sock, server, rec)
        reader = _Reader(sock)
        for i in range(requests):
            if i:
                time.sleep(idle)
            stage = f"request {i + 1}"
            sock.settimeout(timeout)
            sock.sendall(request)
            resp = read_http_response(reader, time.monotonic() + timeout)
            rec["statuses"].append(resp["status"])
            rec["bytes"] += resp["body_bytes"]
            if not resp["complete"]:
                rec["error"] = f"{stage}: incomplete body ({resp['body_bytes']} bytes)"
                return rec
            if resp["status"] != 200:
                rec["error"] = f"{stage}: HTTP {resp['status']}"
                return rec
            rec["responses"] += 1
            if resp["close"] and i + 1 < requests:
                rec["error"] = f"server closed the connection after {rec['responses']} responses"
                return rec
        rec["completed"] = True
    except (OSError, HTTPError, Terminated) as exc:
        failed(rec, exc, stage,
               f"{stage}: {exc}"[:ERROR_MAX] if isinstance(exc, HTTPError) else "")
    finally:
        if sock is not None:
            sock.close()
    return rec


# --- UDP ----------------------------------------------------------------------------------

def _no_df(sock: socket.socket) -> None:
    """Never set DF: datagrams larger than the MTU are fragmented (locally or on the path)."""
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)


def udp_reply(request: bytes, size: int) -> bytes:
    header = request[:UDP_HEADER.size]
    if len(header) < UDP_HEADER.size or not header.startswith(UDP_MAGIC):
        header = UDP_HEADER.pack(UDP_MAGIC, 0, 0xFFFFFFFF)
    return header + b"u" * max(0, size - len(header))


def udp_server(port: int, size: int = 3000, ready: Optional[Callable[[int], None]] = None
               ) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _no_df(sock)
    sock.bind(("", port))
    if ready:
        ready(sock.getsockname()[1])
    while True:
        try:
            data, peer = sock.recvfrom(65536)
            sock.sendto(udp_reply(data, size), peer)
        except OSError:
            continue


def udp_client(server: str, port: int, cport: int, count: int, size: int, reply_size: int,
               interval: float, timeout: float, rec: Optional[Dict[str, Any]] = None,
               retries: int = 0, retry_after: float = 1.0) -> Dict[str, Any]:
    rec = rec if rec is not None else base_record("udp-client", "udp", server, port, cport)
    rec.update(count=count, size=size, reply_size=reply_size, sent=0, received=0, late=0,
               bad=0, missing=[], rtt_avg_ms=None, rtt_max_ms=None, retries=retries,
               resent=0)
    tries: Dict[int, int] = {}
    session = random.getrandbits(32)
    pad = b"q" * (size - UDP_HEADER.size)
    sent_at: Dict[int, float] = {}
    got: Dict[int, float] = {}
    stage = "bind"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _no_df(sock)
        sock.bind(("", cport))
        _local_addr(sock, server, rec)
        dest = (server, port)

        def resend_due() -> float:
            """Resend requests unanswered for ``retry_after`` (as DNS clients do); the time
            of the next resend due."""
            nxt = math.inf
            for seq, t in sent_at.items():
                if seq in got or tries.get(seq, 0) >= retries:
                    continue
                due = t + retry_after
                if due <= time.monotonic():
                    tries[seq] = tries.get(seq, 0) + 1
                    sent_at[seq] = time.monotonic()
                    sock.sendto(UDP_HEADER.pack(UDP_MAGIC, session, seq) + pad, dest)
                    rec["resent"] += 1
                    due = sent_at[seq] + retry_after
                nxt = min(nxt, due)
            return nxt

        def receive_until(until: float) -> None:
            while len(got) < count:
                nxt = resend_due() if retries else math.inf
                wait = min(until, nxt) - time.monotonic()
                if wait <= 0:
                    if time.monotonic() >= until:
                        return
                    continue
                r, _, _ = select.select([sock], [], [], wait)
                if not r:
                    continue
                try:
                    data, peer = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    rec["bad"] += 1        # e.g. ECONNREFUSED surfaced on the socket
                    continue
                now = time.monotonic()
                if (peer[0] != server or peer[1] != port or len(data) < UDP_HEADER.size):
                    rec["bad"] += 1
                    continue
                magic, sess, seq = UDP_HEADER.unpack_from(data)
                if magic != UDP_MAGIC or sess != session or seq not in sent_at or seq in got:
                    rec["bad"] += 1
                    continue
                if len(data) != reply_size:
                    rec["bad"] += 1
                    continue
                if now - sent_at[seq] > timeout:
                    rec["late"] += 1
                    continue
                got[seq] = now - sent_at[seq]
                rec["received"] = len(got)
                rec["bytes"] += len(data)

        t0 = time.monotonic()
        for seq in range(count):
            receive_until(t0 + seq * interval)
            stage = "send"
            sent_at[seq] = time.monotonic()
            sock.sendto(UDP_HEADER.pack(UDP_MAGIC, session, seq) + pad, dest)
            rec["sent"] += 1
        stage = "recv"
        receive_until(time.monotonic() + timeout + retries * retry_after if count else 0)
        rec["completed"] = len(got) == count
        if not rec["completed"]:
            rec["error"] = f"{count - len(got)} of {count} replies missing"
    except (OSError, Terminated) as exc:
        failed(rec, exc, stage)
    finally:
        sock.close()
        rec["missing"] = [s for s in range(rec["sent"]) if s not in got][:20]
        if got:
            rtts = list(got.values())
            rec["rtt_avg_ms"] = round(1000 * sum(rtts) / len(rtts), 3)
            rec["rtt_max_ms"] = round(1000 * max(rtts), 3)
    return rec


def parse_errqueue_cmsg(cdata: bytes) -> Dict[str, Any]:
    """One IP_RECVERR control message: errno, origin, ICMP type/code, offender address."""
    ee_errno, origin, etype, code, _pad, info, data = _EE.unpack_from(cdata)
    offender = ""
    if len(cdata) >= _EE.size + 8:
        family = struct.unpack_from("=H", cdata, _EE.size)[0]
        if family == socket.AF_INET:
            offender = socket.inet_ntoa(cdata[_EE.size + 4:_EE.size + 8])
    return {"errno": ee_errno, "origin": origin, "type": etype, "code": code,
            "info": info, "offender": offender}


def drain_errqueue(sock: socket.socket) -> List[Dict[str, Any]]:
    """Read every queued error (non-blocking); reading them also clears the socket's error."""
    errors = []
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return errors
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return errors
            raise
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IP and ctype == IP_RECVERR and len(cdata) >= _EE.size:
                errors.append(dict(parse_errqueue_cmsg(cdata), payload=data))


def udp_probe(server: str, port: int, cport: int, count: int, interval: float,
              timeout: float = 2.0, rec: Optional[Dict[str, Any]] = None,
              retries: int = 0, retry_after: float = 1.0) -> Dict[str, Any]:
    rec = rec if rec is not None else base_record("udp-probe", "udp", server, port, cport)
    rec.update(count=count, sent=0, errors=0, other_errors=0, error_from=[], retries=retries,
               resent=0)
    answered: set = set()          # probes (by number) whose port-unreachable error came
    stage = "bind"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    poller = select.poll()

    def take(errs: List[Dict[str, Any]]) -> None:
        for e in errs:
            if (e["origin"] == SO_EE_ORIGIN_ICMP and e["type"] == ICMP_DEST_UNREACH
                    and e["code"] == ICMP_PORT_UNREACH):
                head, _, number = e["payload"].partition(b" ")
                if head == b"chainlb-probe" and number.isdigit():
                    answered.add(int(number))
                rec["errors"] = len(answered)
            else:
                rec["other_errors"] += 1
            if e["offender"] and e["offender"] not in rec["error_from"]:
                rec["error_from"].append(e["offender"])

    def wait_errors(until: float) -> None:
        while True:
            take(drain_errqueue(sock))
            wait = until - time.monotonic()
            if wait <= 0 or rec["errors"] + rec["other_errors"] >= count:
                return
            poller.poll(max(1, int(wait * 1000)))

    def send(i: int) -> None:
        payload = b"chainlb-probe %d" % i
        try:
            sock.send(payload)
        except ConnectionRefusedError:
            # a pending ICMP error is reported by send (and that datagram is not sent):
            # it is still in the error queue; read it, then send again
            take(drain_errqueue(sock))
            sock.send(payload)

    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.bind(("", cport))
        stage = "connect"
        sock.connect((server, port))
        _local_addr(sock, server, rec)
        poller.register(sock, select.POLLERR)
        t0 = time.monotonic()
        for i in range(count):
            wait_errors(t0 + i * interval)
            stage = "send"
            send(i)
            rec["sent"] += 1
        for _ in range(retries):          # probes whose error never came are sent again
            stage = "recv"
            wait_errors(time.monotonic() + retry_after)
            missing = [i for i in range(count) if i not in answered]
            if not missing:
                break
            stage = "send"
            for i in missing:
                send(i)
                rec["resent"] += 1
        stage = "recv"
        wait_errors(time.monotonic() + timeout if count else 0)
        rec["completed"] = rec["errors"] == rec["sent"] == count
        if not rec["completed"]:
            rec["error"] = f"{rec['errors']} ICMP port-unreachable errors for {rec['sent']} probes"
    except (OSError, Terminated) as exc:
        failed(rec, exc, stage)
    finally:
        sock.close()
    return rec


# --- curl ---------------------------------------------------------------------------------

CURL_MARK = "chainlb-curl"
CURL_WRITE_OUT = (CURL_MARK + " http_code=%{http_code} size_download=%{size_download}"
                  " local_ip=%{local_ip} local_port=%{local_port} remote_ip=%{remote_ip}"
                  " remote_port=%{remote_port} time_total=%{time_total}\\n")


def curl_command(url: str, cport: int, timeout: float, limit_rate: Optional[str] = None,
                 curl: str = "curl") -> List[str]:
    """The curl command line: no ~/.curlrc (-q), no proxy, body to /dev/null, -w summary."""
    cmd = [curl, "-q", "-sS", "--noproxy", "*", "-o", "/dev/null"]
    if cport:                                       # 0: any local port
        cmd += ["--local-port", str(cport)]
    cmd += ["--max-time", f"{timeout:g}", "-w", CURL_WRITE_OUT]
    if limit_rate:
        cmd += ["--limit-rate", str(limit_rate)]
    return cmd + [url]


def _url_server(url: str):
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.hostname or "", port


def parse_curl(returncode: int, stdout: str, stderr: str, expect: Optional[int] = None
               ) -> Dict[str, Any]:
    """Turn curl's exit code and its ``-w`` line (see :data:`CURL_WRITE_OUT`) into fields:
    ``completed``, ``bytes``, ``http_code``, ``exit_code``, ``client_ip``, ``client_port``,
    ``server_ip``, ``server_port`` (None when curl did not say), ``time_total``, ``error``."""
    vals: Dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith(CURL_MARK + " "):
            for tok in line.split()[1:]:
                k, _, v = tok.partition("=")
                vals[k] = v

    def num(key: str, conv=int):
        try:
            return conv(vals.get(key, ""))
        except ValueError:
            return None

    http_code = num("http_code") or 0
    size = num("size_download") or 0
    res: Dict[str, Any] = {
        "exit_code": returncode, "http_code": http_code, "bytes": size,
        "client_ip": vals.get("local_ip") or None, "client_port": num("local_port") or None,
        "server_ip": vals.get("remote_ip") or None, "server_port": num("remote_port") or None,
        "time_total": num("time_total", float), "completed": False, "error": ""}
    if returncode != 0:
        msgs = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        res["error"] = (msgs[-1] if msgs else f"curl exit {returncode}")[:ERROR_MAX]
    elif not vals:
        res["error"] = "no -w output from curl"
    elif http_code != 200:
        res["error"] = f"HTTP {http_code}"
    elif expect is not None and size != expect:
        res["error"] = f"got {size} bytes, expected {expect}"
    else:
        res["completed"] = True
    return res


def run_curl(url: str, cport: int, timeout: float, limit_rate: Optional[str] = None,
             expect: Optional[int] = None, rec: Optional[Dict[str, Any]] = None,
             curl: str = "curl") -> Dict[str, Any]:
    """Run curl once and fill (and return) an outcome record."""
    host, port = _url_server(url)
    rec = rec if rec is not None else base_record("curl", "tcp", host, port, cport)
    rec.update(url=url, http_code=0, exit_code=None, limit_rate=limit_rate, time_total=None)
    cmd = curl_command(url, cport, timeout, limit_rate, curl)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        rec["error"] = f"{curl} not found: install Debian's curl"
        return rec
    except subprocess.TimeoutExpired:
        rec["error"] = "curl did not exit (killed)"
        return rec
    res = parse_curl(proc.returncode, proc.stdout, proc.stderr, expect)
    for key, val in res.items():
        if val is not None or key not in ("client_ip", "client_port", "server_ip",
                                          "server_port"):
            rec[key] = val
    if not rec["client_ip"]:
        rec["client_ip"] = route_source(host) if _is_ip(host) else ""
    return rec


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


# --- nginx --------------------------------------------------------------------------------

def nginx_conf(root: str, port: int, run_dir: str,
               keepalive_timeout: int = NGINX_KEEPALIVE_TIMEOUT, listen: str = "0.0.0.0",
               worker_processes: int = 1) -> str:
    """A minimal nginx.conf: static files from ``root`` on ``listen:port``, every file nginx
    writes (pid, logs, temp dirs) inside ``run_dir``, foreground (``daemon off``), run as root,
    keep-alive connections kept ``keepalive_timeout`` seconds idle, no sendfile."""
    run = os.path.abspath(run_dir)
    root = os.path.abspath(root)
    return f"""\
# chainlb real-traffic web server (agents/apps.py); run: nginx -p {run}/ -c {run}/nginx.conf
daemon off;
master_process off;     # one process: nothing outlives the PID the testbed holds
user root;
worker_processes {worker_processes};
pid {run}/nginx.pid;
error_log {run}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    log_format chainlb '$remote_addr $remote_port [$time_local] "$request" $status '
                       '$body_bytes_sent $request_time conn=$connection req=$connection_requests';
    access_log {run}/access.log chainlb;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    types {{
        text/html html;
        text/plain txt;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    sendfile off;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_timeout {keepalive_timeout}s;
    keepalive_requests 100000;
    send_timeout 120s;
    server_tokens off;
    # ?rate=200k paces a response server-side (exact, per connection): curl's --limit-rate
    # is an average over seconds and lets a burst through when the socket already holds data
    map $arg_rate $chainlb_rate {{
        default 0;
        "~^[0-9]+[kKmM]?$" $arg_rate;
    }}
    limit_rate $chainlb_rate;

    server {{
        listen {listen}:{port} backlog=1024;
        server_name _;
        root {root};
        location / {{
        }}
    }}
}}
"""


def write_nginx_conf(run_dir: str, root: str, port: int, **kw) -> str:
    """Create ``run_dir`` and write ``run_dir/nginx.conf``; returns its path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(os.path.abspath(run_dir), "nginx.conf")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(nginx_conf(root, port, run_dir, **kw))
    os.replace(tmp, path)
    return path


def make_files(root: str, files: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """Create the served files (default small.bin 1 KiB, large.bin 2 MiB) in ``root`` unless a
    file of that size is there; atomic (hosts sharing the directory may race).
    Returns name -> size."""
    files = dict(NGINX_FILES if files is None else files)
    os.makedirs(root, exist_ok=True)
    block = bytes(range(256)) * 256                        # 64 KiB pattern
    for name, size in files.items():
        path = os.path.join(root, name)
        try:
            if os.path.getsize(path) == size:
                continue
        except OSError:
            pass
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            left = size
            while left > 0:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))
        os.replace(tmp, path)
    return files


def nginx_binary() -> Optional[str]:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def nginx_command(run_dir: str, nginx: str = "nginx") -> List[str]:
    run = os.path.abspath(run_dir)
    return [nginx, "-p", run + "/", "-e", os.path.join(run, "error.log"),
            "-c", os.path.join(run, "nginx.conf")]


# --- command line -------------------------------------------------------------------------

def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {v}")
    return v


def _server_port(text: str) -> int:
    v = _port(text)
    if v == 0:
        raise argparse.ArgumentTypeError("server port must be 1..65535")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {v}")
    return v


def _pos_int(text: str) -> int:
    v = _nonneg_int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {v}")
    return v


def _udp_size(text: str) -> int:
    v = _nonneg_int(text)
    if not UDP_HEADER.size <= v <= UDP_MAX:
        raise argparse.ArgumentTypeError(f"datagram size must be {UDP_HEADER.size}..{UDP_MAX}: {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text}")
    return v


def _pos_float(text: str) -> float:
    v = _nonneg_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return v


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {text!r}") from None


def _path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " \r\n"):
        raise argparse.ArgumentTypeError(
            f"HTTP path must start with / and have no spaces: {text!r}")
    return text


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agents.apps", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")

    def client(name: str, help_: str, server: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        if server:
            c.add_argument("--server", required=True, type=_ipv4, help="server IPv4 address")
            c.add_argument("--port", required=True, type=_server_port, help="server port")
        c.add_argument("--cport", required=True, type=_port, help="local port (0: any)")
        c.add_argument("--out", required=True, help="outcome file (one JSON line appended)")
        c.add_argument("--tag", default="", help="free text copied into the record")
        return c

    s = sub.add_parser("halfclose-server", help="TCP: read to EOF, pause, respond, close")
    s.add_argument("--port", required=True, type=_server_port)
    s.add_argument("--pause", type=_nonneg_float, default=1.0, help="seconds after EOF (1.0)")
    s.add_argument("--size", type=_nonneg_int, default=100000, help="response bytes (100000)")
    s.add_argument("--out", help="append one record per connection")

    c = client("halfclose-client", "TCP: request, FIN, read the response until EOF")
    c.add_argument("--request-size", type=_nonneg_int, default=100)
    c.add_argument("--expect", type=_nonneg_int, help="expected response bytes")
    c.add_argument("--timeout", required=True, type=_pos_float, help="seconds, whole exchange")

    c = client("keepalive-client", "HTTP/1.1 GETs on one kept-alive connection")
    c.add_argument("--path", required=True, type=_path)
    c.add_argument("--idle", required=True, type=_nonneg_float, help="seconds between requests")
    c.add_argument("--requests", required=True, type=_pos_int)
    c.add_argument("--timeout", required=True, type=_pos_float,
                   help="seconds for the connect and for each response")

    s = sub.add_parser("udp-server", help="reply N bytes to each datagram")
    s.add_argument("--port", required=True, type=_server_port)
    s.add_argument("--size", type=_udp_size, default=3000, help="reply bytes (3000)")

    c = client("udp-client", "K datagrams (fragmented when > MTU), count the replies")
    c.add_argument("--count", required=True, type=_nonneg_int)
    c.add_argument("--size", required=True, type=_udp_size)
    c.add_argument("--reply-size", required=True, type=_udp_size)
    c.add_argument("--interval", required=True, type=_nonneg_float)
    c.add_argument("--timeout", required=True, type=_pos_float, help="seconds per reply")
    c.add_argument("--retries", type=_nonneg_int, default=0,
                   help="resend a request unanswered after --retry-after, this many times (0)")
    c.add_argument("--retry-after", type=_pos_float, default=1.0,
                   help="seconds before an unanswered request is resent (1.0)")

    c = client("udp-probe", "UDP to a closed port, count the ICMP port-unreachable errors")
    c.add_argument("--count", required=True, type=_nonneg_int)
    c.add_argument("--interval", required=True, type=_nonneg_float)
    c.add_argument("--timeout", type=_pos_float, default=2.0,
                   help="seconds to wait for errors after the last probe (2.0)")
    c.add_argument("--retries", type=_nonneg_int, default=0,
                   help="send a probe whose error did not come again, this many times (0)")
    c.add_argument("--retry-after", type=_pos_float, default=1.0,
                   help="seconds to wait for the errors before probes are sent again (1.0)")

    c = client("curl", "one curl download", server=False)
    c.add_argument("--url", required=True, type=_url)
    c.add_argument("--limit-rate", help="curl --limit-rate value, e.g. 200k")
    c.add_argument("--expect", type=_nonneg_int, help="expected body bytes")
    c.add_argument("--timeout", required=True, type=_pos_float, help="curl --max-time")

    s = sub.add_parser("nginx", help="write nginx.conf and exec nginx in the foreground")
    s.add_argument("--root", required=True, help="directory served")
    s.add_argument("--port", required=True, type=_server_port)
    s.add_argument("--run-dir", required=True, help="conf, pid, logs, temp dirs")
    s.add_argument("--keepalive-timeout", type=_pos_int, default=NGINX_KEEPALIVE_TIMEOUT)
    s.add_argument("--no-files", action="store_true", help="do not create the served files")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    cmd = args.cmd
    if cmd == "halfclose-server":
        signal.signal(signal.SIGTERM, _exit_zero)
        try:
            halfclose_server(args.port, args.pause, args.size, args.out)
        except KeyboardInterrupt:
            return 0
        except OSError as exc:
            print(f"halfclose-server: {short_error(exc, 'listen')}", file=sys.stderr)
            return 1
    if cmd == "udp-server":
        signal.signal(signal.SIGTERM, _exit_zero)
        try:
            udp_server(args.port, args.size)
        except KeyboardInterrupt:
            return 0
        except OSError as exc:
            print(f"udp-server: {short_error(exc, 'bind')}", file=sys.stderr)
            return 1
    if cmd == "nginx":
        nginx = nginx_binary()
        if nginx is None:
            print("nginx: not installed (Debian package nginx-light)", file=sys.stderr)
            return 127
        try:
            if not args.no_files:
                make_files(args.root)
            write_nginx_conf(args.run_dir, args.root, args.port,
                             keepalive_timeout=args.keepalive_timeout)
        except OSError as exc:
            print(f"nginx: {short_error(exc, 'set-up')}", file=sys.stderr)
            return 1
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(nginx, nginx_command(args.run_dir, nginx))
        except OSError as exc:
            print(f"nginx: {short_error(exc, 'exec ' + nginx)}", file=sys.stderr)
            return 126
    if cmd == "curl":
        host, port = _url_server(args.url)
        rec = base_record("curl", "tcp", host, port, args.cport, args.tag)
        return run_client(rec, lambda r: run_curl(args.url, args.cport, args.timeout,
                                                  args.limit_rate, args.expect, r), args.out)
    proto = "udp" if cmd.startswith("udp") else "tcp"
    rec = base_record(cmd, proto, args.server, args.port, args.cport, args.tag)
    bodies: Dict[str, Callable[[Dict[str, Any]], Any]] = {
        "halfclose-client": lambda r: halfclose_client(
            args.server, args.port, args.cport, args.timeout, args.request_size, args.expect, r),
        "keepalive-client": lambda r: keepalive_client(
            args.server, args.port, args.cport, args.path, args.idle, args.requests,
            args.timeout, r),
        "udp-client": lambda r: udp_client(
            args.server, args.port, args.cport, args.count, args.size, args.reply_size,
            args.interval, args.timeout, r, args.retries, args.retry_after),
        "udp-probe": lambda r: udp_probe(
            args.server, args.port, args.cport, args.count, args.interval, args.timeout, r,
            args.retries, args.retry_after),
    }
    return run_client(rec, bodies[cmd], args.out)


if __name__ == "__main__":
    sys.exit(main())
