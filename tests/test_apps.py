"""agents/apps.py: the real-traffic workloads, client/server pairs on 127.0.0.1 (no Mininet).

Servers and clients run as ``python -m agents.apps`` processes (as the scenario runs them) or
as library calls where timing between several clients matters. nginx tests start a real nginx
from :func:`agents.apps.nginx_conf` in a tmp dir (skipped when nginx is not installed).
"""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agents import apps

REPO = Path(__file__).resolve().parents[1]
COMMON = {"app": str, "tag": str, "client_ip": str, "client_port": int, "server_ip": str,
          "server_port": int, "proto": str, "start": float, "end": float, "completed": bool,
          "bytes": int, "error": str}


# --- helpers ------------------------------------------------------------------------------

def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout=10.0, step=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def udp_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(b"ping", ("127.0.0.1", port))
            return bool(s.recv(65536))
        except OSError:
            return False


def port_bound(port: int, kind=socket.SOCK_DGRAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("", port))
            return False
        except OSError:
            return True


def apps_cmd(*args):
    return [sys.executable, "-m", "agents.apps", *map(str, args)]


def start(*args, log=None, **kw) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(apps_cmd(*args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **kw)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen, group=False) -> int:
    """SIGTERM by PID, wait; SIGKILL (the process group with ``group``) if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(timeout=5)
            return -9
    return proc.returncode


def run_cli(*args, timeout=30):
    return subprocess.run(apps_cmd(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def one_record(path):
    recs = records(path)
    assert len(recs) == 1, recs
    check_common(recs[0])
    return recs[0]


def check_common(rec):
    for key, typ in COMMON.items():
        assert key in rec, key
        assert isinstance(rec[key], typ) or (typ is float and isinstance(rec[key], int)), \
            (key, rec[key])
    assert rec["proto"] in ("tcp", "udp")
    assert rec["end"] >= rec["start"]
    assert not rec["completed"] or rec["error"] == ""


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        stop(p)


# --- records ------------------------------------------------------------------------------

def test_append_record_one_line_per_write(tmp_path):
    out = tmp_path / "o.jsonl"
    threads = [threading.Thread(target=apps.append_record,
                                args=(str(out), {"i": i, "x": "y" * 500})) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["i"] for r in records(out)) == list(range(20))


def test_short_error_texts():
    assert apps.short_error(ConnectionRefusedError(111, "Connection refused"), "connect") \
        == "connect: Connection refused"
    assert apps.short_error(socket.timeout("timed out"), "recv") == "recv: timeout"
    assert apps.short_error(apps.Terminated()) == "terminated"
    assert len(apps.short_error(ValueError("x" * 1000))) <= apps.ERROR_MAX


# --- half-close ---------------------------------------------------------------------------

@pytest.fixture
def halfclose_server(tmp_path, procs):
    port = free_port()
    log = tmp_path / "server.jsonl"
    p = start("halfclose-server", "--port", port, "--pause", 0.3, "--size", 50000,
              "--out", log, log=tmp_path / "server.log")
    procs.append(p)
    wait_until(lambda: tcp_accepts(port), what="halfclose-server")
    # the readiness probe itself was a connection: wait for its record, then forget it
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 1, what="probe record")
    log.unlink()
    return port, log, p


def test_halfclose_completes_and_pause_follows_fin(tmp_path, halfclose_server):
    port, log, server = halfclose_server
    cport = free_port()
    out = tmp_path / "out.jsonl"
    r = run_cli("halfclose-client", "--server", "127.0.0.1", "--port", port, "--cport", cport,
                "--request-size", 1234, "--expect", 50000, "--timeout", 10, "--out", out,
                "--tag", "f1")
    assert r.returncode == 0, r.stdout + r.stderr
    rec = one_record(out)
    assert rec["app"] == "halfclose-client" and rec["proto"] == "tcp" and rec["tag"] == "f1"
    assert rec["completed"] and rec["error"] == ""
    assert rec["bytes"] == 50000 and rec["sent"] == 1234 and rec["expect"] == 50000
    assert rec["client_ip"] == "127.0.0.1" and rec["client_port"] == cport
    assert rec["server_ip"] == "127.0.0.1" and rec["server_port"] == port
    # the response started only after the pause that followed our FIN
    assert rec["wait_s"] >= 0.29
    assert rec["first_byte_at"] - rec["fin_at"] == pytest.approx(rec["wait_s"], abs=1e-5)
    wait_until(lambda: log.exists(), what="server record")
    (srv,) = records(log)
    assert srv["peer_port"] == cport and srv["completed"]
    assert srv["bytes_in"] == 1234 and srv["bytes_out"] == 50000
    assert srv["eof_at"] >= rec["fin_at"] - 0.01          # EOF seen after our FIN ...
    assert srv["send_start"] - srv["eof_at"] >= 0.3       # ... then the pause, then the data
    assert srv["send_start"] <= rec["first_byte_at"] + 0.01
    assert stop(server) == 0                              # SIGTERM: exit 0


def test_halfclose_server_serves_clients_concurrently(halfclose_server):
    port, _, _ = halfclose_server
    results = [None] * 3

    def one(i):
        results[i] = apps.halfclose_client("127.0.0.1", port, 0, timeout=10, expect=50000)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert all(r["completed"] for r in results), results
    assert len({r["client_port"] for r in results}) == 3
    assert elapsed < 0.85, elapsed                        # 3 pauses of 0.3 s overlapped


def test_halfclose_expect_mismatch_and_timeout(halfclose_server):
    port, _, _ = halfclose_server
    rec = apps.halfclose_client("127.0.0.1", port, 0, timeout=10, expect=49999)
    assert not rec["completed"] and rec["error"] == "got 50000 bytes, expected 49999"
    rec = apps.halfclose_client("127.0.0.1", port, 0, timeout=0.15, expect=50000)
    assert not rec["completed"] and rec["error"] == "recv: timeout after 0 bytes"
    assert rec["fin_at"] is not None and rec["first_byte_at"] is None


def test_client_network_errors_are_recorded(tmp_path):
    port = free_port()                                    # nothing listens there
    out = tmp_path / "out.jsonl"
    r = run_cli("halfclose-client", "--server", "127.0.0.1", "--port", port, "--cport", 0,
                "--timeout", 2, "--out", out)
    r2 = run_cli("keepalive-client", "--server", "127.0.0.1", "--port", port, "--cport", 0,
                 "--path", "/x", "--idle", 0, "--requests", 2, "--timeout", 2, "--out", out)
    for res in (r, r2):
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    recs = records(out)
    assert [x["app"] for x in recs] == ["halfclose-client", "keepalive-client"]
    for rec in recs:
        check_common(rec)
        assert not rec["completed"] and rec["error"] == "connect: Connection refused"
        assert rec["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize("argv", [
    ["halfclose-client", "--server", "127.0.0.1", "--port", "80", "--cport", "1", "--timeout", "1"],
    ["halfclose-client", "--server", "10.0.2.999", "--port", "80", "--cport", "1",
     "--timeout", "1", "--out", "x"],
    ["udp-client", "--server", "127.0.0.1", "--port", "70000", "--cport", "1", "--count", "1",
     "--size", "100", "--reply-size", "100", "--interval", "0", "--timeout", "1", "--out", "x"],
    ["udp-client", "--server", "127.0.0.1", "--port", "7", "--cport", "1", "--count", "1",
     "--size", "70000", "--reply-size", "100", "--interval", "0", "--timeout", "1", "--out", "x"],
    ["keepalive-client", "--server", "127.0.0.1", "--port", "80", "--cport", "1", "--path", "x",
     "--idle", "0", "--requests", "1", "--timeout", "1", "--out", "x"],
    ["curl", "--url", "ftp://x/", "--cport", "1", "--timeout", "1", "--out", "x"],
    ["udp-probe", "--server", "127.0.0.1", "--port", "7", "--cport", "1", "--count", "-1",
     "--interval", "0", "--out", "x"],
    ["nosuch"],
])
def test_bad_arguments_are_argparse_errors(tmp_path, argv):
    r = subprocess.run(apps_cmd(*argv), cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


# --- UDP ----------------------------------------------------------------------------------

@pytest.fixture
def udp_server(procs):
    port = free_port(socket.SOCK_DGRAM)
    p = start("udp-server", "--port", port, "--size", 3000)
    procs.append(p)
    wait_until(lambda: udp_answers(port), what="udp-server")
    return port, p


def test_udp_client_counts_fragment_sized_replies(tmp_path, udp_server):
    port, server = udp_server
    cport = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.jsonl"
    r = run_cli("udp-client", "--server", "127.0.0.1", "--port", port, "--cport", cport,
                "--count", 20, "--size", 4000, "--reply-size", 3000, "--interval", 0.01,
                "--timeout", 2, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = one_record(out)
    assert rec["app"] == "udp-client" and rec["proto"] == "udp" and rec["completed"]
    assert (rec["sent"], rec["received"], rec["late"], rec["bad"]) == (20, 20, 0, 0)
    assert rec["bytes"] == 20 * 3000 and rec["missing"] == []
    assert rec["client_port"] == cport and rec["client_ip"] == "127.0.0.1"
    assert rec["count"] == 20 and rec["size"] == 4000 and rec["reply_size"] == 3000
    assert rec["rtt_max_ms"] >= rec["rtt_avg_ms"] > 0
    assert stop(server) == 0


def test_udp_client_wrong_reply_size_and_no_server(udp_server):
    port, _ = udp_server
    rec = apps.udp_client("127.0.0.1", port, 0, count=5, size=4000, reply_size=2000,
                          interval=0, timeout=0.3)
    assert not rec["completed"] and rec["received"] == 0 and rec["bad"] == 5
    assert rec["missing"] == [0, 1, 2, 3, 4] and rec["error"] == "5 of 5 replies missing"
    silent = free_port(socket.SOCK_DGRAM)
    rec = apps.udp_client("127.0.0.1", silent, 0, count=3, size=100, reply_size=100,
                          interval=0, timeout=0.2)
    assert not rec["completed"] and rec["sent"] == 3 and rec["received"] == 0


def test_udp_server_reply_format():
    req = apps.UDP_HEADER.pack(apps.UDP_MAGIC, 7, 42) + b"x" * 100
    rep = apps.udp_reply(req, 3000)
    assert len(rep) == 3000 and apps.UDP_HEADER.unpack_from(rep) == (apps.UDP_MAGIC, 7, 42)
    assert apps.UDP_HEADER.unpack_from(apps.udp_reply(b"junk", 20))[2] == 0xFFFFFFFF


def test_client_sigterm_records_terminated(tmp_path):
    silent = free_port(socket.SOCK_DGRAM)
    cport = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.jsonl"
    p = start("udp-client", "--server", "127.0.0.1", "--port", silent, "--cport", cport,
              "--count", 1, "--size", 100, "--reply-size", 100, "--interval", 0,
              "--timeout", 60, "--out", out)
    try:
        wait_until(lambda: port_bound(cport), what="udp-client bound")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=5) == 1
    finally:
        stop(p)
    rec = one_record(out)
    assert rec["error"] == "terminated" and not rec["completed"]


# --- udp-probe ----------------------------------------------------------------------------

def test_parse_errqueue_cmsg():
    ee = apps._EE.pack(111, apps.SO_EE_ORIGIN_ICMP, 3, 3, 0, 0, 0)
    sin = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("10.0.2.1"))
    e = apps.parse_errqueue_cmsg(ee + sin)
    assert (e["errno"], e["origin"], e["type"], e["code"], e["offender"]) == \
        (111, 2, 3, 3, "10.0.2.1")


NETNS = "chainlb-h2-x"


def _probe_in_netns(tmp_path, count):
    """udp-probe inside a scratch netns with ICMP rate limiting off (the kernel's, not ours)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("ICMP errors rate-limited on lo and no root/ip for a scratch netns")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        ns = ["ip", "netns", "exec", NETNS]
        subprocess.run(ns + ["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(ns + ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"], check=True)
        out = tmp_path / "ns.jsonl"
        r = subprocess.run(ns + apps_cmd("udp-probe", "--server", "127.0.0.1", "--port", 9,
                                         "--cport", 40000, "--count", count, "--interval", 0.01,
                                         "--out", out),
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in r.stderr, r.stderr
        return one_record(out)
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def test_udp_probe_counts_every_port_unreachable(tmp_path):
    closed = free_port(socket.SOCK_DGRAM)
    cport = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.jsonl"
    r = run_cli("udp-probe", "--server", "127.0.0.1", "--port", closed, "--cport", cport,
                "--count", 20, "--interval", 0.01, "--timeout", 2, "--out", out)
    assert "Traceback" not in r.stderr, r.stderr
    rec = one_record(out)
    assert rec["app"] == "udp-probe" and rec["proto"] == "udp"
    assert rec["sent"] == 20 and rec["count"] == 20 and rec["other_errors"] == 0
    assert rec["client_port"] == cport and rec["server_port"] == closed
    if rec["errors"] < rec["sent"]:                      # the kernel's ICMP rate limit
        rec = _probe_in_netns(tmp_path, 20)
    assert rec["errors"] == rec["sent"] == 20 and rec["completed"], rec
    assert rec["error_from"] == ["127.0.0.1"]


def test_udp_probe_open_port_gets_no_errors(udp_server):
    port, _ = udp_server                                  # something does listen: no ICMP
    rec = apps.udp_probe("127.0.0.1", port, 0, count=3, interval=0, timeout=0.3)
    assert rec["sent"] == 3 and rec["errors"] == 0 and not rec["completed"]
    assert rec["error"] == "0 ICMP port-unreachable errors for 3 probes"


# --- HTTP parsing (socketpair) --------------------------------------------------------------

def _parse(raw: bytes, n=1):
    a, b = socket.socketpair()
    try:
        b.sendall(raw)
        b.shutdown(socket.SHUT_WR)
        reader = apps._Reader(a)
        return [apps.read_http_response(reader, time.monotonic() + 2) for _ in range(n)]
    finally:
        a.close()
        b.close()


def test_read_http_response_framings():
    cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    r1, r2 = _parse(cl + cl, 2)
    assert r1 == r2 == {"status": 200, "body_bytes": 5, "complete": True, "close": False}
    (r,) = _parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n")
    assert r == {"status": 200, "body_bytes": 7, "complete": True, "close": False}
    (r,) = _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    assert r["body_bytes"] == 5 and not r["complete"]
    (r,) = _parse(b"HTTP/1.0 200 OK\r\n\r\nuntil-eof")
    assert r["body_bytes"] == 9 and r["complete"] and r["close"]
    (r,) = _parse(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert r["status"] == 404 and r["close"]
    with pytest.raises(apps.HTTPError, match="closed"):
        _parse(b"")
    with pytest.raises(apps.HTTPError, match="status line"):
        _parse(b"garbage\r\n\r\n")


# --- curl (pure) ----------------------------------------------------------------------------

OK_W = ("chainlb-curl http_code=200 size_download=2097152 local_ip=10.0.1.1 local_port=40001 "
        "remote_ip=10.0.2.1 remote_port=80 time_total=0.523000\n")


def test_parse_curl_samples():
    r = apps.parse_curl(0, OK_W, "", expect=2097152)
    assert r["completed"] and r["error"] == "" and r["bytes"] == 2097152
    assert (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"]) == \
        ("10.0.1.1", 40001, "10.0.2.1", 80)
    assert r["http_code"] == 200 and r["exit_code"] == 0 and r["time_total"] == 0.523
    r = apps.parse_curl(0, OK_W, "", expect=1024)
    assert not r["completed"] and r["error"] == "got 2097152 bytes, expected 1024"
    r = apps.parse_curl(0, OK_W.replace("http_code=200", "http_code=404"), "")
    assert not r["completed"] and r["error"] == "HTTP 404"
    timeout_w = ("chainlb-curl http_code=200 size_download=102400 local_ip=10.0.1.1 "
                 "local_port=40001 remote_ip=10.0.2.1 remote_port=80 time_total=5.001\n")
    err = ("curl: (28) Operation timed out after 5001 milliseconds with 102400 out of 2097152"
           " bytes received\n")
    r = apps.parse_curl(28, timeout_w, err)
    assert not r["completed"] and r["exit_code"] == 28 and r["bytes"] == 102400
    assert r["error"] == err.strip()
    refused_w = ("chainlb-curl http_code=000 size_download=0 local_ip= local_port=0 remote_ip= "
                 "remote_port=0 time_total=0.000120\n")
    r = apps.parse_curl(7, refused_w, "curl: (7) Failed to connect to 10.0.2.1 port 80\n")
    assert not r["completed"] and r["http_code"] == 0 and r["bytes"] == 0
    assert r["client_ip"] is None and r["client_port"] is None
    assert r["error"].startswith("curl: (7)")
    r = apps.parse_curl(0, "", "")
    assert not r["completed"] and r["error"] == "no -w output from curl"
    r = apps.parse_curl(6, "", "")
    assert r["error"] == "curl exit 6"


def test_curl_command_line():
    cmd = apps.curl_command("http://10.0.2.1/large.bin", 40001, 30)
    assert cmd[0] == "curl" and cmd[-1] == "http://10.0.2.1/large.bin"
    assert cmd[cmd.index("--local-port") + 1] == "40001"
    assert cmd[cmd.index("-o") + 1] == "/dev/null" and cmd[cmd.index("--max-time") + 1] == "30"
    assert "--limit-rate" not in cmd and "-w" in cmd and "--noproxy" in cmd
    cmd = apps.curl_command("http://10.0.2.1/large.bin", 40001, 2.5, limit_rate="200k")
    assert cmd[cmd.index("--limit-rate") + 1] == "200k" and "2.5" in cmd


# --- nginx ----------------------------------------------------------------------------------

def test_nginx_conf_essentials(tmp_path):
    conf = apps.nginx_conf(str(tmp_path / "www"), 8081, str(tmp_path / "run"),
                           keepalive_timeout=120)
    run = str(tmp_path / "run")
    for line in ("daemon off;", "master_process off;", "user root;", f"pid {run}/nginx.pid;",
                 f"error_log {run}/error.log", f"access_log {run}/access.log",
                 f"client_body_temp_path {run}/client_body;", "sendfile off;",
                 "keepalive_timeout 120s;", "listen 0.0.0.0:8081", f"root {tmp_path}/www;"):
        assert line in conf, line
    body = [ln for ln in conf.splitlines() if not ln.lstrip().startswith("#")]
    paths = re.findall(r"\s(/[^\s;']+)", "\n".join(body))
    assert paths and all(p.startswith(str(tmp_path)) for p in paths), paths  # no /var, /run


def test_make_files_sizes_and_idempotent(tmp_path):
    files = apps.make_files(str(tmp_path))
    assert files == {"small.bin": 1024, "large.bin": 2 * 1024 * 1024}
    mtime = (tmp_path / "large.bin").stat().st_mtime_ns
    for name, size in files.items():
        assert (tmp_path / name).stat().st_size == size
    apps.make_files(str(tmp_path))
    assert (tmp_path / "large.bin").stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == ["large.bin", "small.bin"]


needs_nginx = pytest.mark.skipif(apps.nginx_binary() is None,
                                 reason="nginx not installed (Debian nginx-light: sudo make setup)")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="curl not installed (Debian curl: sudo make setup)")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    if apps.nginx_binary() is None:
        pytest.skip("nginx not installed (Debian nginx-light: sudo make setup)")
    base = tmp_path_factory.mktemp("nginx")
    root, run = base / "www", base / "run"
    port = free_port()
    # the subcommand execs nginx: this PID is the master; its own session so that a master
    # that does not stop can be killed with its workers (by this process group only)
    p = start("nginx", "--root", root, "--port", port, "--run-dir", run,
              "--keepalive-timeout", 120, log=base / "nginx.out", start_new_session=True)
    try:
        wait_until(lambda: tcp_accepts(port) or p.poll() is not None, what="nginx")
        if p.poll() is not None:
            pytest.fail(f"nginx exited {p.returncode}: {(base / 'nginx.out').read_text()}")
        yield {"port": port, "root": root, "run": run, "proc": p}
    finally:
        rc = stop(p, group=True)
        assert rc == 0, f"nginx exit {rc} after SIGTERM"


def test_nginx_conf_is_valid_for_nginx(tmp_path):
    nginx = apps.nginx_binary()
    if nginx is None:
        pytest.skip("nginx not installed (Debian nginx-light: sudo make setup)")
    apps.write_nginx_conf(str(tmp_path / "run"), str(tmp_path / "www"), free_port())
    r = subprocess.run(apps.nginx_command(str(tmp_path / "run"), nginx) + ["-t"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr


def test_nginx_serves_files_and_runs_from_run_dir(nginx):
    assert (nginx["root"] / "large.bin").stat().st_size == 2 * 1024 * 1024
    assert (nginx["run"] / "nginx.pid").read_text().strip() == str(nginx["proc"].pid)
    assert (nginx["run"] / "nginx.conf").exists()


def _access_lines(nginx, cport):
    path = nginx["run"] / "access.log"
    return [ln for ln in path.read_text().splitlines() if ln.split()[1] == str(cport)]


def test_keepalive_client_one_connection(tmp_path, nginx):
    cport = free_port()
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    r = run_cli("keepalive-client", "--server", "127.0.0.1", "--port", nginx["port"],
                "--cport", cport, "--path", "/small.bin", "--idle", 0.3, "--requests", 3,
                "--timeout", 5, "--out", out)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    rec = one_record(out)
    assert rec["app"] == "keepalive-client" and rec["completed"] and rec["error"] == ""
    assert rec["statuses"] == [200, 200, 200] and rec["responses"] == rec["requests"] == 3
    assert rec["bytes"] == 3 * 1024 and rec["client_port"] == cport and rec["idle"] == 0.3
    assert elapsed >= 0.6 and rec["end"] - rec["start"] >= 0.6
    # nginx saw the three requests on one connection, numbered 1, 2, 3 on it
    wait_until(lambda: len(_access_lines(nginx, cport)) == 3, what="access log")
    lines = _access_lines(nginx, cport)
    assert len({ln.split("conn=")[1].split()[0] for ln in lines}) == 1
    assert [ln.split("req=")[1] for ln in lines] == ["1", "2", "3"]


def test_keepalive_client_http_error(nginx):
    rec = apps.keepalive_client("127.0.0.1", nginx["port"], 0, "/missing", 0, 2, 5)
    assert not rec["completed"] and rec["statuses"] == [404]
    assert rec["error"] == "request 1: HTTP 404"


@needs_curl
def test_curl_real_download(tmp_path, nginx):
    cport = free_port()
    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{nginx['port']}/large.bin"
    r = run_cli("curl", "--url", url, "--cport", cport, "--limit-rate", "50m",
                "--expect", 2 * 1024 * 1024, "--timeout", 20, "--out", out, "--tag", "c1")
    assert r.returncode == 0, r.stdout + r.stderr
    rec = one_record(out)
    assert rec["app"] == "curl" and rec["completed"] and rec["http_code"] == 200
    assert rec["bytes"] == 2 * 1024 * 1024 and rec["exit_code"] == 0
    assert rec["client_port"] == cport and rec["client_ip"] == "127.0.0.1"
    assert rec["server_ip"] == "127.0.0.1" and rec["server_port"] == nginx["port"]
    assert rec["limit_rate"] == "50m" and rec["url"] == url and rec["tag"] == "c1"
    assert len(_access_lines(nginx, cport)) == 1


@needs_curl
def test_curl_server_paced_and_timeout(nginx):
    base = f"http://127.0.0.1:{nginx['port']}/large.bin"
    rec = apps.run_curl(base + "?rate=4m", free_port(), timeout=20, expect=2 * 1024 * 1024)
    assert rec["completed"] and rec["time_total"] >= 0.3        # 2 MiB at 4 MiB/s: ~0.5 s
    rec = apps.run_curl(base + "?rate=256k", free_port(), timeout=1)
    assert not rec["completed"] and rec["exit_code"] == 28
    assert rec["error"].startswith("curl: (28)") and 0 < rec["bytes"] < 2 * 1024 * 1024


@needs_curl
def test_curl_refused_is_recorded(tmp_path):
    out = tmp_path / "out.jsonl"
    port = free_port()
    r = run_cli("curl", "--url", f"http://127.0.0.1:{port}/x", "--cport", 0, "--timeout", 5,
                "--out", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rec = one_record(out)
    assert rec["exit_code"] == 7 and not rec["completed"] and rec["server_port"] == port
    assert rec["error"].startswith("curl: (7)") and rec["client_ip"] == "127.0.0.1"


def test_udp_client_resends_an_unanswered_request():
    """A server that ignores the first copy of every request: with retries the client gets
    every reply (and counts the resends); without, none."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    seen, stop_ = set(), threading.Event()

    def serve():
        while not stop_.is_set():
            try:
                data, peer = srv.recvfrom(65536)
            except socket.timeout:
                continue
            head = data[:apps.UDP_HEADER.size]
            if head in seen:
                srv.sendto(head + b"r" * (200 - len(head)), peer)
            seen.add(head)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        rec = apps.udp_client("127.0.0.1", port, 0, count=3, size=300, reply_size=200,
                              interval=0.05, timeout=0.5, retries=2, retry_after=0.1)
        assert rec["completed"] and rec["received"] == 3, rec
        assert rec["sent"] == 3 and rec["resent"] >= 3
        rec = apps.udp_client("127.0.0.1", port, 0, count=2, size=300, reply_size=200,
                              interval=0.05, timeout=0.3)
        assert not rec["completed"] and rec["received"] == 0 and rec["resent"] == 0
    finally:
        stop_.set()
        t.join()
        srv.close()


def test_udp_probe_sends_a_probe_again_when_its_error_does_not_come():
    """The first probe reaches a listening socket (no ICMP error); the port then closes: only
    a resent probe 0 gets its error, and the record counts it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    out = {}
    t = threading.Thread(target=lambda: out.update(apps.udp_probe(
        "127.0.0.1", port, 0, count=3, interval=0.3, timeout=0.5, retries=2,
        retry_after=0.3)))
    t.start()
    try:
        assert listener.recv(100) == b"chainlb-probe 0"
    finally:
        listener.close()
    t.join(10)
    assert out["completed"] and out["errors"] == 3 and out["resent"] >= 1, out
    no_retry = {}
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", port))
    t = threading.Thread(target=lambda: no_retry.update(apps.udp_probe(
        "127.0.0.1", port, 0, count=2, interval=0.3, timeout=0.5)))
    t.start()
    try:
        listener.settimeout(5)
        listener.recv(100)
    finally:
        listener.close()
    t.join(10)
    assert not no_retry["completed"] and no_retry["errors"] == 1 and no_retry["resent"] == 0
