"""Run parameters from the command line: topology and workload sizes, seeds and modes.

``--set key=value`` (or ``make scenario LBS=6 NFS=4 L=2 FLOWS=60 RATE=1 SEEDS=1-5
MODE=chain,maglev``) sizes a scenario without editing it. ``apply`` returns the scenario and
the testbed parameters a run uses, or raises ``ParamError`` naming the key and what is
allowed; nothing here starts anything.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import replace

from typing import TYPE_CHECKING

from agents.modes import MODES
from topo.testbed import TestbedParams

if TYPE_CHECKING:
    from scenarios.registry import Scenario

# command-line key -> TestbedParams field (short names as the Makefile's variables)
TOPOLOGY = {"lbs": "lbs", "nfs": "nfs", "l": "chain_len", "chain_len": "chain_len",
            "clients": "clients", "servers": "servers", "spare_lbs": "spare_lbs",
            "spare_nfs": "spare_nfs", "bw_mbit": "bw_mbit", "variant": "variant",
            "fastpath": "fastpath"}
WORKLOAD = ("flows", "rate", "cps")
KEYS = tuple(TOPOLOGY) + WORKLOAD
MAX_FLOWS = 900           # planned iperf3 flows per run (each is two processes; their
#                           server ports 5201.. stay below the CLI's 6201.. and the apps' 7000..)
MAX_SEEDS = 1000
_NAME_RE = re.compile(r"^(lb|nf)([1-9][0-9]*)$")


class ParamError(ValueError):
    """A parameter a user gave is not valid (the message says which and what is allowed)."""


def parse_set(items: list[str]) -> dict[str, str]:
    """``["lbs=6", "L=2"]`` -> ``{"lbs": "6", "l": "2"}`` (keys lowercased, later wins)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key or not value.strip():
            raise ParamError(f"--set takes key=value, got {item!r} (keys: {', '.join(KEYS)})")
        if key not in KEYS:
            raise ParamError(f"unknown parameter {key!r} in --set {item!r}; valid: "
                             f"{', '.join(KEYS)}")
        out[key] = value.strip()
    return out


def parse_seeds(text: str) -> list[int]:
    """``"1-5"``, ``"1,2,5"`` or a mix (``"1-3,7"``) -> distinct seeds in the order given."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ParamError(f"SEEDS must be numbers, ranges or both, like 1-5 or 1,2,5; "
                             f"got {text!r}")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise ParamError(f"seed range {part!r} runs backwards (write {hi}-{lo})")
        for s in range(lo, hi + 1):
            if s not in seeds:
                seeds.append(s)
        if len(seeds) > MAX_SEEDS:
            raise ParamError(f"at most {MAX_SEEDS} seeds per run; got more in {text!r}")
    return seeds


def parse_modes(text: str) -> list[str]:
    """``"chain,maglev"`` -> ``["chain", "maglev"]``; ``"all"`` -> every mode."""
    if str(text).strip() == "all":
        return list(MODES)
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ParamError(f"unknown mode(s) {', '.join(bad) or repr(text)}; valid modes: "
                         f"{', '.join(MODES)} (one, a comma list, or all)")
    return list(dict.fromkeys(modes))


def _int(key: str, raw: str, lo: int, hi: int) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise ParamError(f"{key} must be a whole number, got {raw!r}") from None
    if not lo <= v <= hi:
        raise ParamError(f"{key} must be within {lo}..{hi}, got {v}")
    return v


def scale_flows(scenario: Scenario, total: int) -> Scenario:
    """``total`` planned flows spread over the scenario's flow batches in proportion to their
    counts (largest remainders; the total is exact)."""
    counts = [b.count for b in scenario.batches]
    if not counts:
        raise ParamError(f"scenario {scenario.name} has no iperf3 flows to size (FLOWS)")
    have = sum(counts)
    shares = [total * c / have for c in counts]
    out = [int(s) for s in shares]
    for i in sorted(range(len(out)), key=lambda i: shares[i] - out[i], reverse=True):
        if sum(out) == total:
            break
        out[i] += 1
    return replace(scenario, batches=tuple(replace(b, count=n)
                                           for b, n in zip(scenario.batches, out)))


def scale_arrivals(scenario: Scenario, raw: str) -> Scenario:
    """Every arrival batch at ``raw`` new connections per second (``CPS=``)."""
    from scenarios.arrivals import MAX_RATE_CPS
    if not scenario.arrivals:
        raise ParamError(f"scenario {scenario.name} has no [[arrivals]] to set the rate of (CPS)")
    try:
        cps = float(raw)
    except ValueError:
        raise ParamError(f"cps must be a number of connections per second, got {raw!r}") \
            from None
    if not 0 < cps <= MAX_RATE_CPS:
        raise ParamError(f"cps must be within 0..{MAX_RATE_CPS:g} (above 0), got {cps:g}")
    return replace(scenario, arrivals=tuple(replace(a, rate_cps=cps)
                                            for a in scenario.arrivals))


def event_needs(scenario: Scenario) -> dict[str, int]:
    """What the scenario's events need of the topology: the highest lbN / nfN they name among
    the initial hosts, and the spare hosts their add_* events take."""
    adds = Counter(e.action for e in scenario.events if e.action in ("add_nf", "add_lb"))
    need = {"lbs": 1, "nfs": 1, "spare_lbs": adds["add_lb"], "spare_nfs": adds["add_nf"]}
    for e in scenario.events:
        m = _NAME_RE.match(e.target or "")
        if m and not e.action.startswith("add_"):
            key = "lbs" if m[1] == "lb" else "nfs"
            need[key] = max(need[key], int(m[2]))
    return need


def apply(scenario: Scenario, overrides: dict[str, str]) -> tuple[Scenario, TestbedParams]:
    """The scenario and testbed parameters after ``overrides`` (from ``parse_set``)."""
    base = dict(scenario.params)
    topo = {TOPOLOGY[k]: v for k, v in overrides.items() if k in TOPOLOGY}
    try:
        params = TestbedParams.from_mapping({**base, **topo})
    except ValueError as e:
        raise ParamError(str(e)) from None
    need = event_needs(scenario)
    # spare hosts default to what the events take; given ones must be enough
    for field in ("spare_lbs", "spare_nfs"):
        have = getattr(params, field)
        if field in topo:
            if have < need[field]:
                raise ParamError(f"scenario {scenario.name} adds {need[field]} "
                                 f"{'LB' if field == 'spare_lbs' else 'NF'} host(s): "
                                 f"{field} must be >= {need[field]}, got {have}")
        elif have < need[field]:
            params = replace(params, **{field: need[field]})
    for field, var in (("lbs", "LBS"), ("nfs", "NFS")):
        if getattr(params, field) < need[field]:
            names = sorted({e.target for e in scenario.events
                            if (e.target or "").startswith(field[:2])})
            raise ParamError(f"scenario {scenario.name}'s events name {', '.join(names)}: "
                             f"{var} must be >= {need[field]}, got {getattr(params, field)}")
    try:
        params = params.validate()
    except ValueError as e:
        raise ParamError(str(e)) from None
    if "flows" in overrides:
        scenario = scale_flows(scenario, _int("flows", overrides["flows"], 1, MAX_FLOWS))
    if "rate" in overrides:
        try:
            rate = float(overrides["rate"])
        except ValueError:
            raise ParamError(f"rate must be a number of Mbit/s, got {overrides['rate']!r}") \
                from None
        if not 0 < rate <= 1000:
            raise ParamError(f"rate must be within 0..1000 Mbit/s (above 0), got {rate:g}")
        scenario = replace(scenario, batches=tuple(replace(b, rate_mbit=rate)
                                                   for b in scenario.batches))
    if "cps" in overrides:
        scenario = scale_arrivals(scenario, overrides["cps"])
    scenario = replace(scenario, params={f.name: getattr(params, f.name)
                                         for f in dataclasses.fields(TestbedParams)})
    return scenario, params


def topology(overrides: dict[str, str]) -> TestbedParams:
    """The testbed of the interactive CLI: topology keys only (it plans no flows)."""
    bad = [k for k in overrides if k not in TOPOLOGY]
    if bad:
        raise ParamError(f"the CLI takes the testbed's sizes only ({', '.join(TOPOLOGY)}); "
                         f"not {', '.join(bad)} (start flows with its `flows N` command)")
    try:
        return TestbedParams.from_mapping({TOPOLOGY[k]: v for k, v in overrides.items()})
    except ValueError as e:
        raise ParamError(str(e)) from None
