"""Named scenarios: which flows start when, and which pool changes fire when (read from the
built-in scenario files, ``scenarios/builtin/*.toml``; see ``scenarios.files``).

Times are seconds from the start of traffic; ``scenarios.traffic`` plans a scenario's flows
from a seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from scenarios import workloads
from scenarios.arrivals import ArrivalBatch
from scenarios.workloads import AppBatch

ACTIONS = ("add_nf", "drain_nf", "remove_nf", "kill_nf", "kill_lb", "restart_lb", "readmit_lb",
           "add_lb", "kill_controller", "partition_lb", "heal_lb")


@dataclass(frozen=True)
class FlowBatch:
    count: int
    start_s: float          # the first flow starts here...
    spread_s: float         # ...the others evenly over this window
    duration_s: float
    rate_mbit: float = 2.0
    proto: str = "tcp"


@dataclass(frozen=True)
class Event:
    at_s: float
    action: str             # one of ACTIONS
    target: str = ""        # NF / LB name; '' = the next free name (add_*)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    batches: tuple[FlowBatch, ...]
    events: tuple[Event, ...] = ()
    chain_loss_pct: int = 0               # chain frames dropped on LB hosts (nftables)
    params: dict = field(default_factory=dict)   # TestbedParams overrides
    apps: tuple[AppBatch, ...] = ()       # real applications (scenarios.workloads)
    arrivals: tuple[ArrivalBatch, ...] = ()   # open-loop short connections (scenarios.arrivals)

    def scaled(self, factor: float) -> "Scenario":
        """The same scenario with every time and duration multiplied by ``factor``."""
        if not 0.1 <= factor <= 10:
            raise ValueError(f"time scale must be within 0.1..10, got {factor}")
        return replace(self,
                       batches=tuple(replace(b, start_s=b.start_s * factor,
                                             spread_s=b.spread_s * factor,
                                             duration_s=max(1.0, round(b.duration_s * factor)))
                                     for b in self.batches),
                       events=tuple(replace(e, at_s=e.at_s * factor) for e in self.events),
                       apps=tuple(workloads.scaled(a, factor) for a in self.apps),
                       arrivals=tuple(a.scaled(factor) for a in self.arrivals))

    @property
    def traffic_s(self) -> float:
        """When the last planned traffic should have ended."""
        return max([b.start_s + b.spread_s + b.duration_s for b in self.batches]
                   + [a.start_s + a.spread_s + workloads.expected_s(a) for a in self.apps]
                   + [a.end_s for a in self.arrivals])


# the built-in scenarios are files of the scenario-file format (scenarios/builtin/*.toml)
from scenarios import files  # noqa: E402  (after the types the files are read into)

SCENARIOS: dict[str, Scenario] = files.builtin()


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid scenarios: "
                         f"{', '.join(SCENARIOS)}, all") from None
