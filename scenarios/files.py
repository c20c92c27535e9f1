"""Scenario files: a scenario described in TOML (stdlib ``tomllib``).

The built-in scenarios are files of this format in ``scenarios/builtin/``; ``--file PATH``
(``make scenario FILE=PATH``) runs any other. The format::

    name = "pool-change"                 # required: letters, digits, - and _
    description = "..."
    chain_loss_pct = 0                   # chain frames dropped on the LB hosts, 0..100
    [topology]                           # optional: lbs, nfs, chain_len, clients, servers,
    lbs = 4                              #   spare_lbs, spare_nfs, bw_mbit
    [[flows]]                            # paced iperf3 flows
    count = 12                           # required
    start_s = 0.0                        # required: the first starts here...
    spread_s = 3.0                       # ...the others evenly over this window (default 0)
    duration_s = 24.0                    # required
    rate_mbit = 2.0                      # default 2.0
    proto = "tcp"                        # tcp | udp
    [[events]]
    at_s = 8.0                           # several events may share a time
    action = "add_nf"                    # see ACTIONS
    target = ""                          # NF / LB name; '' = the next free one (add_*)
    [[apps]]                             # real applications (scenarios.workloads)
    kind = "http_short"
    count = 16
    start_s = 0.0
    spread_s = 26.0
    options = { }                        # per kind, see workloads.DEFAULTS
    [[arrivals]]                         # open-loop short TCP connections (scenarios.arrivals)
    rate_cps = 100.0                     # required: Poisson arrivals, new connections/s
    start_s = 0.0                        # required
    duration_s = 20.0                    # required
    sizes = "websearch"                  # websearch | datamining | fixed:N | a CDF file (a
                                         #   path relative to this file)
    max_bytes = 1000000                  # sizes above are cut to this (default 1 MB)
    timeout_s = 30.0                     # per connection (default 30)
    hold_s = 0.0                         # the server keeps each one idle this long first

A bad file raises ``ScenarioFileError`` naming the file, the key and what is allowed; an
unknown key is an error, not ignored.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from scenarios import workloads
from scenarios.params import ParamError, TOPOLOGY
from scenarios.arrivals import (DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, MAX_DURATION_S,
                                MAX_RATE_CPS, BUILTIN_SIZES, ArrivalBatch)
from scenarios.workloads import AppBatch

BUILTIN = Path(__file__).resolve().parent / "builtin"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
TOP_KEYS = ("name", "description", "chain_loss_pct", "topology", "flows", "events", "apps",
            "arrivals")
TOPOLOGY_KEYS = tuple(dict.fromkeys(v for v in TOPOLOGY.values()))
FLOW_KEYS = ("count", "start_s", "spread_s", "duration_s", "rate_mbit", "proto")
EVENT_KEYS = ("at_s", "action", "target")
APP_KEYS = ("kind", "count", "start_s", "spread_s", "options")
ARRIVAL_KEYS = ("rate_cps", "start_s", "duration_s", "sizes", "max_bytes", "timeout_s",
                "hold_s")


class ScenarioFileError(ParamError):
    """A scenario file that is not valid: the message names the file, the key, what is
    allowed."""


class _Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, msg: str):
        raise ScenarioFileError(f"{self.path}: {where}: {msg}")

    def keys(self, table, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()):
        if not isinstance(table, dict):
            self.fail(where, f"must be a table, got {type(table).__name__}")
        for k in table:
            if k not in allowed:
                self.fail(where, f"unknown key {k!r} (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in table:
                self.fail(where, f"missing key {k!r} (required: {', '.join(required)})")

    def number(self, table, key: str, where: str, default=None, *, lo=0.0, hi=None,
               above: bool = False, whole: bool = False):
        v = table.get(key, default)
        ok = isinstance(v, int) if whole else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or v < lo or (above and v <= lo) \
                or (hi is not None and v > hi):
            kind = "a whole number" if whole else "a number"
            bound = f"> {lo:g}" if above else f">= {lo:g}"
            if hi is not None:
                bound += f" and <= {hi:g}"
            self.fail(f"{where}.{key}", f"must be {kind} {bound}, got {v!r}")
        return v

    def text(self, table, key: str, where: str, default=None, choices=None):
        v = table.get(key, default)
        if not isinstance(v, str):
            self.fail(f"{where}.{key}", f"must be a string, got {v!r}")
        if choices is not None and v not in choices:
            self.fail(f"{where}.{key}", f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def array(self, data, key: str) -> list:
        v = data.get(key, [])
        if not isinstance(v, list):
            self.fail(key, f"must be an array of tables ([[{key}]]), got {type(v).__name__}")
        return v


def parse(text: str, path: str = "<string>"):
    """The ``Scenario`` a TOML text describes (``path`` names it in errors)."""
    from scenarios.registry import ACTIONS, Event, FlowBatch, Scenario
    r = _Reader(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioFileError(f"{path}: not valid TOML: {e}") from None
    r.keys(data, "the file", TOP_KEYS, ("name",))
    name = r.text(data, "name", "the file")
    if not _NAME_RE.match(name):
        r.fail("name", f"must be letters, digits, - and _ (starting with a letter or digit), "
                       f"got {name!r}")
    description = r.text(data, "description", "the file", default="")
    loss = r.number(data, "chain_loss_pct", "the file", 0, hi=100, whole=True)
    topology = data.get("topology", {})
    r.keys(topology, "topology", TOPOLOGY_KEYS)
    for k, v in topology.items():
        if k == "bw_mbit":
            r.number(topology, k, "topology", above=True, hi=10000)
        else:
            r.number(topology, k, "topology", whole=True, lo=0 if k.startswith("spare") else 1)
    batches = []
    for i, f in enumerate(r.array(data, "flows")):
        w = f"flows[{i}]"
        r.keys(f, w, FLOW_KEYS, ("count", "start_s", "duration_s"))
        batches.append(FlowBatch(
            r.number(f, "count", w, whole=True), float(r.number(f, "start_s", w)),
            float(r.number(f, "spread_s", w, 0.0)),
            float(r.number(f, "duration_s", w, above=True)),
            float(r.number(f, "rate_mbit", w, 2.0, above=True, hi=1000)),
            r.text(f, "proto", w, "tcp", ("tcp", "udp"))))
    events = []
    for i, e in enumerate(r.array(data, "events")):
        w = f"events[{i}]"
        r.keys(e, w, EVENT_KEYS, ("at_s", "action"))
        events.append(Event(float(r.number(e, "at_s", w)), r.text(e, "action", w, choices=ACTIONS),
                            r.text(e, "target", w, "")))
    apps = []
    for i, a in enumerate(r.array(data, "apps")):
        w = f"apps[{i}]"
        r.keys(a, w, APP_KEYS, ("kind", "count", "start_s"))
        options = a.get("options", {})
        if not isinstance(options, dict):
            r.fail(f"{w}.options", f"must be a table, got {options!r}")
        try:
            apps.append(AppBatch(r.text(a, "kind", w, choices=workloads.KINDS),
                                 r.number(a, "count", w, whole=True),
                                 float(r.number(a, "start_s", w)),
                                 float(r.number(a, "spread_s", w, 0.0)), dict(options)))
        except ValueError as e:
            r.fail(w, str(e))
    arrivals = []
    for i, a in enumerate(r.array(data, "arrivals")):
        w = f"arrivals[{i}]"
        r.keys(a, w, ARRIVAL_KEYS, ("rate_cps", "start_s", "duration_s"))
        try:
            arrivals.append(ArrivalBatch(
                float(r.number(a, "rate_cps", w, above=True, hi=MAX_RATE_CPS)),
                float(r.number(a, "start_s", w)),
                float(r.number(a, "duration_s", w, above=True, hi=MAX_DURATION_S)),
                _sizes(r.text(a, "sizes", w, "websearch"), path),
                r.number(a, "max_bytes", w, DEFAULT_MAX_BYTES, whole=True, lo=1),
                float(r.number(a, "timeout_s", w, DEFAULT_TIMEOUT_S, above=True)),
                float(r.number(a, "hold_s", w, 0.0))))
        except ValueError as e:
            r.fail(w, str(e))
    if not batches and not apps and not arrivals:
        r.fail("the file", "plans no traffic: give [[flows]], [[apps]] or [[arrivals]]")
    events.sort(key=lambda e: e.at_s)
    return Scenario(name, description, tuple(batches), tuple(events), loss, dict(topology),
                    tuple(apps), tuple(arrivals))


def _sizes(spec: str, path: str) -> str:
    """A CDF file named relative to the scenario file, as a path from here."""
    if spec.startswith("fixed:") or spec in BUILTIN_SIZES or Path(spec).is_absolute():
        return spec
    near = Path(path).parent / spec
    return str(near) if near.exists() else spec


def load(path: str | Path):
    """The scenario in file ``path``."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ScenarioFileError(f"{path}: cannot read it: {e.strerror or e}") from None
    return parse(text, str(path))


def _value(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def dump(scenario) -> str:
    """``scenario`` as a file of this format (``parse(dump(s)) == s``)."""
    out = [f"name = {_value(scenario.name)}", f"description = {_value(scenario.description)}"]
    if scenario.chain_loss_pct:
        out.append(f"chain_loss_pct = {scenario.chain_loss_pct}")
    if scenario.params:
        out += ["", "[topology]"] + [f"{k} = {_value(v)}" for k, v in scenario.params.items()]
    for b in scenario.batches:
        out += ["", "[[flows]]", f"count = {b.count}", f"start_s = {b.start_s!r}",
                f"spread_s = {b.spread_s!r}", f"duration_s = {b.duration_s!r}",
                f"rate_mbit = {b.rate_mbit!r}", f"proto = {_value(b.proto)}"]
    for e in scenario.events:
        out += ["", "[[events]]", f"at_s = {e.at_s!r}", f"action = {_value(e.action)}"]
        if e.target:
            out.append(f"target = {_value(e.target)}")
    for a in scenario.apps:
        out += ["", "[[apps]]", f"kind = {_value(a.kind)}", f"count = {a.count}",
                f"start_s = {a.start_s!r}", f"spread_s = {a.spread_s!r}"]
        if a.options:
            out.append(f"options = {_value(a.options)}")
    for a in scenario.arrivals:
        out += ["", "[[arrivals]]", f"rate_cps = {a.rate_cps!r}", f"start_s = {a.start_s!r}",
                f"duration_s = {a.duration_s!r}", f"sizes = {_value(a.sizes)}",
                f"max_bytes = {a.max_bytes}", f"timeout_s = {a.timeout_s!r}",
                f"hold_s = {a.hold_s!r}"]
    return "\n".join(out) + "\n"


def builtin() -> dict:
    """The built-in scenarios, by name, in the order of their files' names."""
    out = {}
    for p in sorted(BUILTIN.glob("*.toml")):
        s = load(p)
        if s.name in out:
            raise ScenarioFileError(f"{p}: name {s.name!r} is taken by another built-in file")
        out[s.name] = s
    return out
