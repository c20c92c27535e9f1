"""The in-kernel fast path on a real testbed: its BPF map, read with bpftool (not through
agents.fastpath), holds exactly the connections the agent's table says, and follows inserts,
the ends of connections, idle timeouts, NF purges and a crashed agent.

Needs root (Mininet, OVS, XDP), like the other ``root`` tests.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from agents.conntrack import CtTimeouts
from agents.keys import flow_key
from scenarios.testbed import wait_for
from topo import testbed as topo

pytestmark = [pytest.mark.root, pytest.mark.slow]
UDP_PORT, TCP_PORT = 9999, 9998
# short UDP timeouts, so that an idle connection ends within the test (LB: 3 + 1 s)
TIMEOUTS = CtTimeouts(udp=3, udp_stream=3)


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    from scenarios.testbed import Testbed
    from topo.testbed import TestbedParams
    params = TestbedParams(clients=1, servers=1, lbs=2, nfs=2, spare_nfs=0, spare_lbs=0,
                           chain_len=2, fastpath="xdp")
    with Testbed(params, "chain", tmp_path_factory.mktemp("fastpath"), log=lambda *_: None,
                 timeouts=TIMEOUTS) as t:
        t.wait_agents_current(20)
        sink = t.net["s1"].popen([sys.executable, "-c", SINK], stdout=subprocess.DEVNULL)
        try:
            yield t
        finally:
            sink.kill()
            sink.wait()


SINK = f"""
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {UDP_PORT}))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", {TCP_PORT})); t.listen(8)
def serve(c):
    while True:
        data = c.recv(65536)
        if not data:
            c.shutdown(socket.SHUT_WR); c.close(); return
        c.sendall(data)
threading.Thread(target=lambda: [u.recv(2048) for _ in iter(int, 1)], daemon=True).start()
while True:
    threading.Thread(target=serve, args=(t.accept()[0],), daemon=True).start()
"""


def bpftool(host, *args):
    out = topo.host_run(host, ["bpftool", "-j", *args])
    return json.loads(out) if out.strip() else None


def read_map(tb, lb: str) -> dict[bytes, tuple[bytes, int]] | None:
    """The fast path's map on ``lb``, by bpftool: key -> (NF MAC, packets); None if no XDP
    program is attached to its data interface."""
    host = tb.net[lb]
    net = bpftool(host, "net", "show", "dev", topo.intf_of(lb))
    progs = [p for entry in (net or []) for p in entry.get("xdp", [])]
    if not progs:
        return None
    prog = bpftool(host, "prog", "show", "id", str(progs[0]["id"]))
    for map_id in prog["map_ids"]:
        info = bpftool(host, "map", "show", "id", str(map_id))
        if info["name"] == "conns":
            rows = bpftool(host, "map", "dump", "id", str(map_id)) or []
            out = {}
            for row in rows:
                key = bytes(int(b, 16) for b in row["key"])
                value = bytes(int(b, 16) for b in row["value"])
                out[key] = (value[:6], int.from_bytes(value[24:32], "little"))
            return out
    raise AssertionError(f"{lb}: the XDP program has no map 'conns'")


def status(lb: str) -> dict:
    from agents.lb import query
    from scenarios.testbed import RUN_DIR
    return query(str(RUN_DIR), lb, "status")


def table_nf(tb, key: bytes) -> str:
    """The NF the agents' table decided for ``key`` (its tail's committed entry)."""
    from agents.keys import key_str
    from agents.lb import query
    from scenarios.testbed import RUN_DIR
    for lb in tb.lbs:
        for row in query(str(RUN_DIR), lb, "table 1000")["rows"]:
            if row["key"] == key_str(key) and row["committed"] and row["nf"] != "(deleted)":
                return row["nf"]
    return ""


def where(tb, key: bytes) -> dict[str, tuple[bytes, int]]:
    """Per LB node whose map holds ``key``: (NF MAC, packets)."""
    out = {}
    for lb in tb.lbs:
        entries = read_map(tb, lb) or {}
        if key in entries:
            out[lb] = entries[key]
    return out


def udp_sender(tb, sport: int, seconds: float, every: float = 0.05):
    code = (f"import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0', {sport}))\nend = time.monotonic() + {seconds}\n"
            f"while time.monotonic() < end:\n    s.sendto(b'x' * 100, ('{topo.ip_of('s1')}', "
            f"{UDP_PORT}))\n    time.sleep({every})\n")
    return tb.net["c1"].popen([sys.executable, "-c", code])


def mac(nf: str) -> bytes:
    return bytes.fromhex(topo.mac_of(nf).replace(":", ""))


def test_a_udp_connection_is_in_the_map_while_it_sends_and_leaves_it_when_idle(tb):
    key = flow_key(topo.ip_of("c1"), topo.ip_of("s1"), 17, 40001, UDP_PORT)
    deletes = sum(status(lb)["counts"]["deletes"] for lb in tb.lbs)
    sender = udp_sender(tb, 40001, 9.0)
    try:
        held = wait_for("the connection in a map", lambda: where(tb, key), 5)
        (lb, (nf_mac, packets)), = held.items()
        assert nf_mac == mac(table_nf(tb, key)), "the map forwards to the table's NF"
        # longer than the LB's idle timeout (4 s) the kernel forwards it: the map's
        # activity keeps the connection (in the map at every look), and the kernel forwards
        # nearly all of it
        start = time.monotonic()
        while time.monotonic() - start < 6.0:
            assert key in (read_map(tb, lb) or {}), "the live connection left the map"
            time.sleep(0.5)
        (nf_mac2, packets2), = where(tb, key).values()
        assert nf_mac2 == nf_mac and packets2 > packets + 80
        assert sum(status(x)["counts"]["deletes"] for x in tb.lbs) == deletes
    finally:
        sender.wait()
    # idle: the agent ends it, and its map entry goes with it
    wait_for("the idle connection to leave every map", lambda: not where(tb, key), 8)
    assert sum(status(x)["counts"]["deletes"] for x in tb.lbs) > deletes


def test_a_tcp_connection_enters_the_map_established_and_leaves_at_its_end(tb):
    code = (f"import socket, sys, time\nc = socket.create_connection(('{topo.ip_of('s1')}', "
            f"{TCP_PORT}), source_address=('0.0.0.0', 40002))\nfor i in range(40):\n"
            f"    c.sendall(b'y' * 1000); c.recv(1000); time.sleep(0.05)\n"
            f"sys.stdin.readline()\nc.shutdown(socket.SHUT_WR)\nwhile c.recv(1000): pass\n"
            f"c.close()\n")
    key = flow_key(topo.ip_of("c1"), topo.ip_of("s1"), 6, 40002, TCP_PORT)
    client = tb.net["c1"].popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        held = wait_for("the connection in a map", lambda: where(tb, key), 5)
        nf = table_nf(tb, key)
        assert {m for m, _ in held.values()} == {mac(nf)}
        wait_for("packets forwarded in the kernel",
                 lambda: sum(p for _, p in where(tb, key).values()) > 20, 5)
        client.stdin.write(b"\n")
        client.stdin.flush()
        assert client.wait(10) == 0
    finally:
        client.kill()
    # both FINs crossed the agents: no map holds it any more (the table keeps it closing)
    wait_for("the closed connection to leave every map", lambda: not where(tb, key), 3)


def test_the_benchs_nf_path_crosses_one_nf_and_no_lb_node(tb):
    """``max_throughput_nf_path``'s baseline: with ``Session.nf_path`` the switch sends a
    client's traffic, both directions, through one NF and no LB node."""
    from bench.testbed_bench import COOKIE, QUICK, Session
    s = Session(tb, QUICK, lambda *_: None)
    code = (f"import socket\nc = socket.create_connection(('{topo.ip_of('s1')}', {TCP_PORT}), "
            f"timeout=5)\nfor i in range(400):\n    c.sendall(b'z' * 1000); c.recv(1000)\n"
            f"c.close()\n")
    hosts = list(tb.lbs) + ["nf1", "nf2"]
    with s.nf_path():
        before = {h: s.port_rx(h) for h in hosts}
        assert tb.net["c1"].popen([sys.executable, "-c", code]).wait(20) == 0
        after = {h: s.port_rx(h) for h in hosts}
    # 400 requests and 400 answers cross nf1; the other ports see only the control plane's
    # frames meanwhile (heartbeats, probes)
    grew = {h for h in hosts if after[h] - before[h] >= 800}
    assert grew == {"nf1"}, (before, after)
    assert not s.ofctl("dump-flows", topo.SWITCH, f"cookie={COOKIE}/-1").splitlines()[1:], \
        "the rules leave with the context"


def test_the_controller_probes_every_nf_at_the_probe_interval(tb):
    """The controller's loop runs as often as probes are due (PROBE_INTERVAL is below its
    other timers' period): the NFs' probe counts grow at that rate, and they come back."""
    from ryu_apps.policy import PROBE_INTERVAL

    def counts():
        return {n["name"]: (n["probes_sent"], n["probes_back"])
                for n in tb.rest("GET", "/view")["nfs"]}
    before, t0 = counts(), time.monotonic()
    due = round(0.5 / PROBE_INTERVAL)          # half a second's worth, at the interval

    def grown():
        now = counts()
        return now if all(now[nf][0] - before[nf][0] >= due for nf in before) else None
    after = wait_for(f"{due} probes of every NF", grown, 2.5 * due * PROBE_INTERVAL, 0.02)
    dt = time.monotonic() - t0
    for nf, (sent, back) in after.items():
        rate = (sent - before[nf][0]) / dt
        assert 0.6 / PROBE_INTERVAL <= rate <= 1.2 / PROBE_INTERVAL, (nf, rate)
        assert back - before[nf][1] >= 0.5 * (sent - before[nf][0]), (nf, before, after)


def test_an_nf_that_fails_leaves_every_map(tb):
    sender = udp_sender(tb, 40003, 12.0, every=0.02)
    key = flow_key(topo.ip_of("c1"), topo.ip_of("s1"), 17, 40003, UDP_PORT)
    try:
        wait_for("the connection in a map", lambda: where(tb, key), 5)
        nf = table_nf(tb, key)
        tb.kill_nf(nf)
        wait_for(f"{nf} marked failed", lambda: tb.nf_detections().get(nf) is not None, 5)

        def moved():
            held = where(tb, key)
            return held and all(m != mac(nf) for m, _ in held.values())
        wait_for("the connection decided again, on a live NF", moved, 5)
        for lb in tb.lbs:
            assert mac(nf) not in {m for m, _ in (read_map(tb, lb) or {}).values()}
    finally:
        sender.kill()
        sender.wait()


def test_a_killed_agent_leaves_no_program_forwarding(tb):
    """Last: it takes an LB node away."""
    lb = tb.lbs[-1]
    assert read_map(tb, lb) is not None
    proc = tb.procs[lb]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tb.lbs.remove(lb)
    assert read_map(tb, lb) is None, "the program left with the agent's link"


def test_without_the_built_program_the_agent_says_so_and_forwards_itself(tmp_path, monkeypatch):
    """The fallback, on a veth pair of its own (no Mininet)."""
    import agents.fastpath as fastpath
    from agents.lb import Agent
    a, b = "fpt-a", "fpt-b"
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for intf in (a, b):
            subprocess.run(["ip", "link", "set", intf, "up"], check=True)
        monkeypatch.setattr(fastpath, "OBJECT", tmp_path / "missing.o")
        agent = Agent("lb9", a, b"s" * 32, "chain", str(tmp_path), str(tmp_path / "logs"),
                      fastpath="xdp")
        assert agent.fp is None and agent.dp.fast is None
        assert agent.status()["fastpath"].startswith("off (") and "not built" in \
            agent.status()["fastpath"]
        monkeypatch.undo()
        agent2 = Agent("lb8", b, b"s" * 32, "chain", str(tmp_path), str(tmp_path / "logs"),
                       fastpath="xdp")
        assert agent2.fp is not None and agent2.status()["fastpath"] == "xdp (generic)"
        agent2.fp.close()
        assert "xdp" not in subprocess.run(["ip", "link", "show", b], capture_output=True,
                                           text=True).stdout.split()
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
