"""What a crashed run leaves behind (its bridges and links) is removed before the next run."""
from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager

import pytest

from scenarios.testbed import Lock, TestbedFailure, cleanup_leftovers
from topo import testbed as topo

pytestmark = pytest.mark.root

LEFTOVERS = ("chainlb0", "chainlb0-lb9", "lb9-eth1x", "gw-eth3009", "lb9-eth0x")


@contextmanager
def machine_lock(timeout: float = 600):
    """The testbed lock, waited for: no testbed may run while this test fakes one's leftovers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Lock():
                yield
            return
        except TestbedFailure:
            if time.monotonic() > deadline:
                pytest.fail("another testbed run held the lock for 10 minutes")
            time.sleep(5)


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_leftover_cluster_bridge_and_links_are_removed():
    with machine_lock():
        try:
            # a crashed run's cluster bridge with an LB node's link, and a port link of gw
            ip("link", "add", topo.CLUSTER_BRIDGE, "type", "bridge")
            ip("link", "add", "chainlb0-lb9", "type", "veth", "peer", "name", "lb9-eth1x")
            ip("link", "set", "chainlb0-lb9", "master", topo.CLUSTER_BRIDGE)
            ip("link", "add", "gw-eth3009", "type", "veth", "peer", "name", "lb9-eth0x")
            assert set(LEFTOVERS) <= links()
            done = cleanup_leftovers(log=lambda _: None)
            assert not set(LEFTOVERS) & links(), done
            assert "removed bridge chainlb0" in done
        finally:
            for name in LEFTOVERS:
                subprocess.run(["ip", "link", "del", name], capture_output=True)
