"""How an LB node picks the NF of a connection, per LB mode (pure logic, no I/O).

- ``hash``: the key modulo the active NFs (stateless).
- ``maglev``: a Maglev table over the active NFs (stateless).
- ``local``: Maglev for the first packet, then a per-node connection table (Katran-like).
- ``chain``: the chain-replicated table (``agents.chain``); this module only supplies its
  proposals, the decision comes from the chain.
"""
from __future__ import annotations

import zlib

from agents.maglev import Maglev

MODES = ("chain", "maglev", "local", "hash")


class Picker:
    """The stateless part every mode shares: choose an NF among the active ones."""

    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown LB mode {mode!r}; valid modes: {', '.join(MODES)}")
        self.mode = mode
        self.active: tuple[str, ...] = ()
        self._maglev = Maglev([])
        self.local: dict[bytes, str] = {}      # mode "local": this node's connection table

    def set_active(self, nfs) -> bool:
        """Use these active NFs for new choices; returns whether the set changed."""
        active = tuple(sorted(nfs))
        if active == self.active:
            return False
        self.active = active
        self._maglev = Maglev(active)
        return True

    def propose(self, key: bytes) -> str | None:
        """The NF a new connection would get here (None if no NF is active)."""
        if not self.active:
            return None
        if self.mode == "hash":
            return self.active[zlib.crc32(key) % len(self.active)]
        return self._maglev.lookup(key)

    def stateless(self, key: bytes) -> str | None:
        """The NF for any packet in the modes that decide without the chain."""
        if self.mode == "local":
            nf = self.local.get(key)
            if nf is None:
                nf = self.propose(key)
                if nf is not None:
                    self.local[key] = nf
            return nf
        return self.propose(key)

    def forget(self, key: bytes) -> None:
        self.local.pop(key, None)
