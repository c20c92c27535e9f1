"""The launched controller: its REST API and config checks (no switch), then end to end
driving a real Mininet switch (userspace OVS, root only).

A small net (gw; c1, c2, s1, lb1, lb2, nf1) and ``python -m ryu_apps.launch``. On each LB
host runs a stand-in agent (raw sockets, ``agents.wire``): it heartbeats the epoch of the
last view it received and records views and the IPv4 connections it is steered.
"""
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OFP_PORT, REST_PORT = 16653, 18080  # not the defaults: never collide with a running testbed
LOCK = Path("/run/chainlb/lock")
HOSTS = {  # name: (mac, ip, switch port)
    "c1": ("02:00:00:00:01:01", "10.0.1.1", 1),
    "c2": ("02:00:00:00:01:02", "10.0.1.2", 2),
    "s1": ("02:00:00:00:02:01", "10.0.2.1", 3),
    "lb1": ("02:00:00:00:03:01", "10.0.3.1", 4),
    "lb2": ("02:00:00:00:03:02", "10.0.3.2", 5),
    "nf1": ("02:00:00:00:04:01", "10.0.4.1", 6),
}

# Stand-in LB agent: heartbeats, records views and steered connections as JSON lines.
AGENT = textwrap.dedent(r"""
    import json, select, socket, sys, time
    from agents import wire
    from agents.messages import Heartbeat, ViewMsg
    name, intf, mac, secret_file, out, forge = sys.argv[1:7]
    secret = open(secret_file, "rb").read()
    if forge == "1":
        secret = b"not-the-secret"
    ctl = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(wire.ETHERTYPE))
    ctl.bind((intf, wire.ETHERTYPE))
    ip = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    ip.bind((intf, 0x0800))
    mymac = bytes.fromhex(mac.replace(":", ""))
    ctrl = bytes.fromhex("02000000ff01")
    log = open(out, "a", buffering=1)
    epoch, next_hb, seen, end = 0, 0.0, set(), time.monotonic() + 120
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_hb:
            ctl.send(wire.frame_bytes(ctrl, mymac, Heartbeat(name, epoch, 7), secret))
            next_hb = now + 0.1
        r, _, _ = select.select([ctl, ip], [], [], max(0.0, next_hb - now))
        if ctl in r:
            buf, addr = ctl.recvfrom(2048)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            try:
                msg = wire.decode(buf[14:], secret)
            except wire.WireError:
                continue
            if isinstance(msg, ViewMsg):
                epoch = max(epoch, msg.epoch)
                log.write(json.dumps({"view": msg.epoch, "lbs": [l.name for l in msg.lbs],
                                      "nfs": [[n.name, n.state] for n in msg.nfs]}) + "\n")
        if ip in r:
            buf, addr = ip.recvfrom(2048)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ihl = (buf[14] & 15) * 4
            proto, src, dst = buf[23], socket.inet_ntoa(buf[26:30]), socket.inet_ntoa(buf[30:34])
            sport = int.from_bytes(buf[14 + ihl:16 + ihl], "big")
            dport = int.from_bytes(buf[16 + ihl:18 + ihl], "big")
            flow = [proto, src, sport, dst, dport]
            if tuple(flow) not in seen:
                seen.add(tuple(flow))
                log.write(json.dumps({"flow": flow, "dst_mac": buf[:6].hex()}) + "\n")
""")

# Opens n connections: "udp"/"tcp" from source ports first.. to dst:port (TCP: just the
# SYN, nobody answers), "udp-from" from src:port to destination ports first..
SENDER = textwrap.dedent(r"""
    import socket, sys
    mode, src, dst, port, first, n = sys.argv[1:4] + [int(a) for a in sys.argv[4:7]]
    socks = []
    for p in range(first, first + n):
        kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode == "udp-from":
            s.bind((src, port))
            s.sendto(b"y" * 64, (dst, p))
        elif mode == "udp":
            s.bind((src, p))
            for _ in range(3):
                s.sendto(b"x" * 64, (dst, port))
        else:
            s.bind((src, p))
            s.setblocking(False)
            s.connect_ex((dst, port))
        socks.append(s)
""")


def wait_for(what, fn, timeout):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def rest(method, path, body=None, port=REST_PORT, raw=None):
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None, None


def records(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_secret(path, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, mode)
    os.write(fd, os.urandom(32))
    os.close(fd)
    os.chmod(path, mode)


def small_config(secret):
    return {"secret_file": str(secret), "chain_len": 2, "mode": "chain",
            "edge_ports": {"c1": {"mac": HOSTS["c1"][0], "port": 1}},
            "lbs": [{"name": h, "mac": HOSTS[h][0], "port": HOSTS[h][2]} for h in ("lb1", "lb2")],
            "nfs": [{"name": "nf1", "mac": HOSTS["nf1"][0], "port": HOSTS["nf1"][2]}]}


def launch(cfg_path, ofp_port, rest_port, log=None, state=None):
    cmd = [sys.executable, "-m", "ryu_apps.launch", "--config", str(cfg_path),
           "--ofp-port", str(ofp_port), "--rest-port", str(rest_port)]
    cmd += ["--state", str(state)] if state else []
    return subprocess.Popen(cmd + (["--log", str(log)] if log else []), cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("change, message", [
    (lambda c, d: c.update(mode="roundrobin"), "bad mode 'roundrobin': expected one of chain, maglev"),
    (lambda c, d: c.pop("secret_file"), "lacks 'secret_file'"),
    (lambda c, d: c["nfs"].append({"name": "nf1", "mac": "02:00:00:00:04:09", "port": 30}),
     "name nf1 is already in use"),
    (lambda c, d: c.update(secret_file=str(d / "missing")), "cannot read secret_file"),
    (lambda c, d: (write_secret(d / "open", 0o644), c.update(secret_file=str(d / "open"))),
     "chmod 600"),
    (lambda c, d: c.update(lbs=[]), "no LB nodes"),
])
def test_launch_refuses_bad_config(tmp_path, change, message):
    write_secret(tmp_path / "secret")
    cfg = small_config(tmp_path / "secret")
    change(cfg, tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    p = launch(tmp_path / "cfg.json", free_port(), free_port())
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_launch_refuses_busy_port_and_bad_json(tmp_path):
    write_secret(tmp_path / "secret")
    (tmp_path / "cfg.json").write_text(json.dumps(small_config(tmp_path / "secret")))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        p = launch(tmp_path / "cfg.json", free_port(), busy.getsockname()[1])
        _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "cannot listen for REST" in err
    (tmp_path / "bad.json").write_text('{"chain_len": 2,')
    p = launch(tmp_path / "bad.json", free_port(), free_port())
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "is not valid JSON" in err


def test_a_killed_controller_resumes_from_its_state_file(tmp_path):
    """Changes are saved before they take effect; a controller SIGKILLed and started again
    with the same state file serves the same view at a higher epoch, whatever its config
    says the initial view was; a state file that is not a snapshot is refused."""
    write_secret(tmp_path / "secret")
    (tmp_path / "cfg.json").write_text(json.dumps(small_config(tmp_path / "secret")))
    state = tmp_path / "state.json"
    port = free_port()
    p = launch(tmp_path / "cfg.json", free_port(), port, state=state)
    try:
        wait_for("the REST API", lambda: p.poll() is not None or rest("GET", "/health", port=port)[0], 20)
        assert json.loads(state.read_text())["epoch"] == 1       # saved at once
        nf = {"name": "nf2", "mac": "02:00:00:00:04:02", "port": 12}
        assert rest("POST", "/nfs", nf, port=port)[0] == 200
        assert rest("POST", "/nfs/nf1/drain", port=port)[0] == 200
        assert rest("DELETE", "/lbs/lb2", port=port)[0] == 200
        saved = json.loads(state.read_text())
        assert saved["epoch"] == 4 and [n["state"] for n in saved["nfs"]] == ["draining", "active"]
    finally:
        p.kill()
        p.communicate(timeout=30)
    port = free_port()
    p = launch(tmp_path / "cfg.json", free_port(), port, state=state)
    try:
        wait_for("the REST API", lambda: p.poll() is not None or rest("GET", "/health", port=port)[0], 20)
        st, v = rest("GET", "/view", port=port)
        assert st == 200 and v["epoch"] == 5
        assert [(n["name"], n["state"]) for n in v["nfs"]] == [("nf1", "draining"), ("nf2", "active")]
        assert [m["name"] for m in v["lbs"]] == ["lb1"]
        assert json.loads(state.read_text())["epoch"] == 5
    finally:
        p.kill()
        p.communicate(timeout=30)
    state.write_text('{"version": 1, "epoch": 3}')
    p = launch(tmp_path / "cfg.json", free_port(), free_port(), state=state)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "state file" in err and "malformed" in err, err
    assert "Traceback" not in err


def test_rest_api_without_switch(tmp_path):
    """Every endpoint and error of the REST API, on the real launched controller."""
    write_secret(tmp_path / "secret")
    (tmp_path / "cfg.json").write_text(json.dumps(small_config(tmp_path / "secret")))
    port = free_port()
    p = launch(tmp_path / "cfg.json", free_port(), port, log=tmp_path / "ctl.log")
    try:
        wait_for("the REST API", lambda: p.poll() is not None or rest("GET", "/health", port=port)[0], 20)
        assert p.poll() is None, p.stderr.read()
        assert rest("GET", "/health", port=port) == (200, {"status": "ok", "switch_connected": False,
                                                          "epoch": 1})
        st, v = rest("GET", "/view", port=port)
        assert st == 200 and v["epoch"] == 1 and v["steering"] == [] and not v["switch_connected"]
        assert [(m["name"], m["status"], m["last_heartbeat_age"]) for m in v["lbs"]] == [
            ("lb1", "joining", None), ("lb2", "joining", None)]
        nf = {"name": "nf2", "mac": "02:00:00:00:04:02", "port": 12}
        st, v = rest("POST", "/nfs", nf, port=port)
        assert st == 200 and v["epoch"] == 2 and {k: v["nfs"][1][k] for k in (*nf, "state")} == dict(nf, state="active")
        assert rest("POST", "/nfs/nf2/drain", port=port)[1]["nfs"][1]["state"] == "draining"
        assert rest("DELETE", "/nfs/nf2", port=port)[1]["nfs"][1]["state"] == "failed"
        lb = {"name": "lb3", "mac": "02:00:00:00:03:03", "port": 13,
              "cluster_mac": "02:00:00:01:03:03"}
        st, v = rest("POST", "/lbs", lb, port=port)
        assert st == 200 and v["epoch"] == 5 and v["lbs"][2]["status"] == "joining"
        assert v["lbs"][2]["cluster_mac"] == "02:00:00:01:03:03"
        assert v["lbs"][0]["cluster_mac"] == ""
        st, v = rest("DELETE", "/lbs/lb3", port=port)
        assert st == 200 and v["epoch"] == 6 and len(v["lbs"]) == 2
        errors = [
            (("POST", "/nfs", nf), 400, "name nf2 is already in use"),
            (("POST", "/nfs", {"name": "nf3", "mac": "nope", "port": 14}), 400, "bad MAC"),
            (("POST", "/nfs", {"name": "nf3"}), 400, "body lacks mac, port"),
            (("POST", "/nfs", dict(nf, name="nf3", colour=1)), 400, "unknown fields ['colour']"),
            (("POST", "/nfs", dict(nf, name="nf3", cluster_mac="02:00:00:01:04:03")), 400,
             "unknown fields ['cluster_mac']"),        # NFs are not on the LB cluster network
            (("POST", "/lbs", dict(lb, name="lb4", mac="02:00:00:00:03:04", port=14,
                                   cluster_mac="x")), 400, "bad MAC"),
            (("POST", "/nfs", None, b"[1,2"), 400, "body is not JSON"),
            (("POST", "/nfs/nf2/drain", None), 400, "only an active NF"),
            (("DELETE", "/nfs/nf9", None), 404, "no NF named 'nf9'"),
            (("DELETE", "/lbs/lb9", None), 404, "no LB node named 'lb9'"),
            (("GET", "/nfs", None), 405, "GET not allowed on /nfs; use POST"),
            (("GET", "/nowhere", None), 404, "no such resource /nowhere"),
        ]
        for args, status, words in errors:
            st, body = rest(*args[:3], port=port, raw=args[3] if len(args) > 3 else None)
            assert st == status and words in body["error"], (args, st, body)
        assert rest("GET", "/view", port=port)[1]["epoch"] == 6  # refusals change nothing
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()
        p.stderr.close()


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    from mininet.link import TCULink
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.node import OVSSwitch, RemoteController

    setLogLevel("error")
    tmp = tmp_path_factory.mktemp("gw")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = open(LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.fail(f"{LOCK} is held: another testbed run is in progress")
    br = subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", "gw"])
    if br.returncode == 0:
        lock.close()
        pytest.fail("an OVS bridge 'gw' exists (a running or crashed net): run `sudo make clean`")
    secret = tmp / "secret"
    write_secret(secret)
    cfg = {"secret_file": str(secret), "chain_len": 2, "mode": "chain", "heartbeat_timeout": 0.5,
           "nf_detect_timeout": 0,         # nf1 here is a bare host: it forwards nothing
           "edge_ports": {h: {"mac": HOSTS[h][0], "port": HOSTS[h][2]} for h in ("c1", "c2", "s1")},
           "lbs": [{"name": h, "mac": HOSTS[h][0], "port": HOSTS[h][2]} for h in ("lb1", "lb2")],
           "nfs": [{"name": "nf1", "mac": HOSTS["nf1"][0], "port": HOSTS["nf1"][2]}]}
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    procs, net = {}, None
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    try:
        procs["ctl"] = subprocess.Popen(
            [sys.executable, "-m", "ryu_apps.launch", "--config", str(tmp / "cfg.json"),
             "--ofp-port", str(OFP_PORT), "--rest-port", str(REST_PORT), "--log", str(tmp / "ctl.log")],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "ctl.err", "w"))
        wait_for("the controller's REST API",
                 lambda: procs["ctl"].poll() is not None or rest("GET", "/health")[0] == 200, 20)
        assert procs["ctl"].poll() is None, (tmp / "ctl.err").read_text()

        net = Mininet(switch=OVSSwitch, link=TCULink, controller=None, autoSetMacs=False,
                      build=False)
        net.addController("c0", controller=RemoteController, ip="127.0.0.1", port=OFP_PORT)
        gw = net.addSwitch("gw", dpid="0000000000000001", datapath="user",
                           protocols="OpenFlow13", failMode="secure")
        for name, (mac, ip, port) in HOSTS.items():
            h = net.addHost(name, ip=f"{ip}/16", mac=mac)
            net.addLink(h, gw, port2=port)
        net.build()
        net.start()
        for h in net.hosts:
            h.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            for other, (mac, ip, _) in HOSTS.items():
                if other != h.name:
                    h.cmd(f"ip neigh replace {ip} lladdr {mac} dev {h.name}-eth0")
        wait_for("the switch to connect", lambda: rest("GET", "/health")[1]["switch_connected"], 20)

        def start_agent(name, forge=False, tag=""):
            out = tmp / f"{name}{tag}.jsonl"
            procs[name + tag] = net[name].popen(
                [sys.executable, "-c", AGENT, name, f"{name}-eth0", HOSTS[name][0], str(secret),
                 str(out), "1" if forge else "0"], cwd=str(ROOT), env=env,
                stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}{tag}.err", "w"))
            return out

        yield {"net": net, "tmp": tmp, "procs": procs, "start_agent": start_agent, "env": env}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if net is not None:
            net.stop()
        lock.close()


def send(tb, host, mode, dst, port, first, n):
    out, err, code = tb["net"][host].pexec(
        [sys.executable, "-c", SENDER, mode, HOSTS[host][1], dst, str(port), str(first), str(n)])
    assert code == 0, err


def flows_by_lb(tb, files, pred):
    return {lb: {tuple(r["flow"]) for r in records(f) if "flow" in r and pred(r["flow"])}
            for lb, f in files.items()}


@pytest.mark.root
@pytest.mark.slow
def test_heartbeats_views_and_steering(testbed):
    tb = testbed
    st, view = rest("GET", "/view")
    assert st == 200 and view["steering"] == [] and view["epoch"] == 1
    assert {m["name"]: m["status"] for m in view["lbs"]} == {"lb1": "joining", "lb2": "joining"}

    # A heartbeat under the wrong secret is dropped and counted, nothing else.
    tb["start_agent"]("lb2", forge=True, tag="-forged")
    wait_for("a forged heartbeat to be counted",
             lambda: rest("GET", "/view")[1]["counters"].get("dropped_bad_frame", 0) >= 2, 10)
    tb["procs"]["lb2-forged"].terminate()
    tb["procs"]["lb2-forged"].wait(5)
    assert rest("GET", "/view")[1]["lbs"][1]["reported_epoch"] is None

    # Real heartbeats: both LB nodes get the view, report its epoch, and are steered to.
    files = {lb: tb["start_agent"](lb) for lb in ("lb1", "lb2")}
    view = wait_for("both LB nodes up in GET /view", lambda: (
        lambda v: v if v["steering"] == [4, 5] else None)(rest("GET", "/view")[1]), 10)
    for m in view["lbs"]:
        assert m["status"] == "up" and m["reported_epoch"] == 1 and m["entries"] == 7
        assert m["last_heartbeat_age"] is not None and m["last_heartbeat_age"] < 0.5
    assert view["counters"]["heartbeats"] >= 2
    assert records(files["lb1"])[0]["view"] == 1

    # POST /nfs: a new view frame reaches the LB hosts, and their heartbeats follow it.
    st, after = rest("POST", "/nfs", {"name": "nf2", "mac": "02:00:00:00:04:02", "port": 9})
    assert st == 200 and after["epoch"] == 2
    for lb, f in files.items():
        wait_for(f"the epoch-2 view at {lb}", lambda: any(
            r.get("view") == 2 and ["nf2", "active"] in r["nfs"] for r in records(f)), 5)
    wait_for("agents at epoch 2", lambda: all(
        m["reported_epoch"] == 2 for m in rest("GET", "/view")[1]["lbs"]), 5)
    assert rest("POST", "/nfs", {"name": "nf2", "mac": "02:00:00:00:04:03", "port": 10})[0] == 400
    assert rest("DELETE", "/nfs/nf7")[0] == 404

    # Steering: 40 UDP flows and 24 TCP connections, c1 -> s1, spread over both LB ports,
    # each connection on one LB only; replies s1 -> c1 land on the same LB (symmetric hash).
    send(tb, "c1", "udp", HOSTS["s1"][1], 5001, 20000, 40)
    send(tb, "c1", "tcp", HOSTS["s1"][1], 5201, 30000, 24)
    send(tb, "s1", "udp-from", HOSTS["c1"][1], 5001, 20000, 40)

    def spread():
        fwd = flows_by_lb(tb, files, lambda f: f[1] == HOSTS["c1"][1])
        return fwd if sum(len(v) for v in fwd.values()) >= 64 else None
    fwd = wait_for("64 connections seen at the LB nodes", spread, 10)
    udp = {lb: {f for f in v if f[0] == 17} for lb, v in fwd.items()}
    tcp = {lb: {f for f in v if f[0] == 6} for lb, v in fwd.items()}
    print(f"steering: UDP {len(udp['lb1'])}/{len(udp['lb2'])}, TCP {len(tcp['lb1'])}/{len(tcp['lb2'])}")
    assert not fwd["lb1"] & fwd["lb2"], "a connection was seen at both LB nodes"
    assert len(udp["lb1"] | udp["lb2"]) == 40 and len(tcp["lb1"] | tcp["lb2"]) == 24
    for per in (udp, tcp):
        assert min(len(per["lb1"]), len(per["lb2"])) >= len(per["lb1"] | per["lb2"]) // 5
    rev = wait_for("replies at the LB nodes", lambda: (lambda r: r if sum(
        len(v) for v in r.values()) >= 40 else None)(flows_by_lb(
            tb, files, lambda f: f[1] == HOSTS["s1"][1] and f[2] == 5001 and f[4] >= 20000)), 10)
    for lb in files:
        assert {(17, HOSTS["c1"][1], f[4], HOSTS["s1"][1], 5001) for f in rev[lb]} <= fwd[lb]

    # L2 delivery by destination MAC: what an LB node sends to nf1 arrives there.
    nf_file = tb["start_agent"]("nf1")
    wait_for("nf1's listener", lambda: nf_file.exists(), 5)
    code = tb["net"]["lb1"].pexec([sys.executable, "-c", (
        "import socket; s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('lb1-eth0', 0)); "
        "ip=bytes.fromhex('4500001c0000000040110000') + socket.inet_aton('10.0.1.2') + "
        "socket.inet_aton('10.0.2.1') + bytes.fromhex('a0000fa100080000'); "
        "[s.send(bytes.fromhex('020000000401020000000301') + b'\\x08\\x00' + ip + bytes(32)) for _ in range(3)]")],
        cwd=str(ROOT))[2]
    assert code == 0
    wait_for("the LB->NF frame at nf1", lambda: any(
        r.get("flow") == [17, "10.0.1.2", 0xA000, "10.0.2.1", 0x0FA1] for r in records(nf_file)), 5)

    # LB failure: lb2 stops heartbeating; it leaves steering and the view; new flows go to lb1.
    tb["procs"]["lb2"].kill()
    tb["procs"]["lb2"].wait(5)
    t0 = time.monotonic()
    view = wait_for("lb2 removed", lambda: (lambda v: v if [m["name"] for m in v["lbs"]] == ["lb1"]
                                            else None)(rest("GET", "/view")[1]), 5)
    print(f"lb2 removed {time.monotonic() - t0:.2f} s after its agent was killed")
    assert view["steering"] == [4] and view["epoch"] == 3
    send(tb, "c2", "udp", HOSTS["s1"][1], 5001, 40000, 20)
    got = wait_for("20 new flows at lb1", lambda: (lambda s: s if len(s) == 20 else None)(
        flows_by_lb(tb, {"lb1": files["lb1"]}, lambda f: f[1] == HOSTS["c2"][1])["lb1"]), 5)
    assert len(got) == 20
    assert not flows_by_lb(tb, {"lb2": files["lb2"]}, lambda f: f[1] == HOSTS["c2"][1])["lb2"]
    assert rest("DELETE", "/lbs/lb1")[0] == 400  # the last LB node stays
