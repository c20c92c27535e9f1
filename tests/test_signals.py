"""A run stops on SIGTERM and SIGHUP as on Ctrl-C, and its cleanup survives lost output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

CHILD = r"""
import os, signal, sys, time
from scenarios.testbed import Interrupted, say, stop_on_signals
stop_on_signals()
try:
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(5)
    print("not interrupted")
except Interrupted as e:
    os.kill(os.getpid(), signal.SIGTERM)      # a second signal while cleaning: ignored
    time.sleep(0.2)
    print(f"interrupted by {e}, cleanup finished")
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_interrupts_once_and_the_cleanup_finishes(sig):
    p = subprocess.run([sys.executable, "-c", CHILD, sig], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"interrupted by {sig}, cleanup finished"


def test_say_goes_on_when_its_reader_is_gone():
    """``| tee log`` and Ctrl-C: tee dies first; the run's messages must not stop its
    cleanup (print would raise BrokenPipeError)."""
    code = ("import sys, time\nfrom scenarios.testbed import say\n"
            "say('first')\ntime.sleep(0.5)\n"
            "for i in range(20000): say('line', i, 'x' * 100)\n"       # > a pipe's buffer
            "say('to stderr', file=sys.stderr)\n"
            "open(sys.argv[1], 'w').write('cleanup ran')\n")
    marker = f"/tmp/chainlb-say-{os.getpid()}"
    p = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"first"
    p.stdout.close()                            # the reader dies
    assert p.wait(30) == 0, p.stderr.read().decode()
    assert open(marker).read() == "cleanup ran"
    assert b"Traceback" not in p.stderr.read()
    os.unlink(marker)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "broken-stdout"])
def test_a_stopped_run_leaves_nothing_and_writes_an_interrupted_summary(how):
    """SIGTERM a running scenario, or Ctrl-C it while its output pipe is gone (as with
    ``| tee`` and Ctrl-C): nothing is left behind, and its results say ``interrupted``."""
    from scenarios.results import RESULTS
    from test_e2e import _nothing_left_behind
    p = subprocess.Popen([sys.executable, "-m", "scenarios", "run", "scale-out", "--mode",
                          "chain", "--time-scale", "0.5"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    run_dir = None
    deadline = time.monotonic() + 120
    for line in p.stdout:
        if "results: " in line and run_dir is None:
            run_dir = line.split("results: ", 1)[1].strip()
        if "flows running" in line and "t=  2." in line or time.monotonic() > deadline:
            break
    assert run_dir, "the run said where its results go"
    if how == "sigterm":
        p.send_signal(signal.SIGTERM)
    else:
        p.stdout.close()
        p.send_signal(signal.SIGINT)
    assert p.wait(120) == 130
    err = p.stderr.read()
    assert "Traceback" not in err, err
    summary = pd.read_csv(f"{run_dir}/summary.csv").iloc[0]
    assert summary["status"] == "interrupted"
    assert json.loads(open(f"{run_dir}/params.json").read())["scenario"] == "scale-out"
    assert str(RESULTS) in run_dir
    _nothing_left_behind()
