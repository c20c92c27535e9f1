"""Maglev consistent hashing of connection keys onto NF names.

Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
section 3.4: each NF gets a permutation of the table slots from two hashes of its name
(``offset``, ``skip``); the NFs take turns claiming their next free preferred slot until the
table is full. Every NF ends up with floor or ceil of size/n slots, and a change of the NF set
moves few slots.

Everything is deterministic across processes: names are hashed with SHA-256 and the NF list
is sorted first, so every LB node that sees the same NF set builds the same table.
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Sequence

__all__ = ["Maglev", "key_hash"]


def key_hash(key: bytes) -> int:
    """Fast, stable 32-bit hash of a connection key (CRC-32)."""
    return zlib.crc32(key)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _offset_skip(name: str, size: int) -> tuple[int, int]:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:16], "big") % (size - 1) + 1
    return offset, skip


def _populate(nfs: tuple[str, ...], size: int) -> list[int]:
    """Slot -> index into ``nfs`` (the paper's Populate, with permutations computed lazily)."""
    table = [-1] * size
    if not nfs:
        return table
    params = [_offset_skip(name, size) for name in nfs]
    pos = [off for off, _ in params]  # current candidate slot of each NF
    skips = [skip for _, skip in params]
    filled = 0
    while True:
        for i in range(len(nfs)):
            slot = pos[i]
            skip = skips[i]
            while table[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = i
            pos[i] = slot + skip - size if slot + skip >= size else slot + skip
            filled += 1
            if filled == size:
                return table


class Maglev:
    """Maglev lookup table over NF names."""

    def __init__(self, nfs: Sequence[str], size: int = 65537):
        if isinstance(nfs, str):
            raise ValueError("nfs must be a sequence of NF names, not a string")
        names = tuple(nfs)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"NF names must be non-empty strings, got {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate NF names in {list(names)}")
        if isinstance(size, bool) or not isinstance(size, int) or not _is_prime(size):
            raise ValueError(f"Maglev table size must be a prime number, got {size!r}")
        if size <= len(names):
            raise ValueError(f"Maglev table size {size} must exceed the number of NFs ({len(names)})")
        self.nfs: tuple[str, ...] = tuple(sorted(names))
        self.size = size
        self._table = [self.nfs[i] if i >= 0 else "" for i in _populate(self.nfs, size)]

    def lookup(self, key: bytes) -> str:
        """NF for ``key``; LookupError when there is no NF."""
        if not self.nfs:
            raise LookupError("no active NF")
        return self._table[zlib.crc32(key) % self.size]

    def slots(self) -> dict[str, int]:
        """Number of table slots per NF."""
        counts = dict.fromkeys(self.nfs, 0)
        for name in self._table:
            if name:
                counts[name] += 1
        return counts

    def __repr__(self) -> str:
        return f"Maglev({list(self.nfs)!r}, size={self.size})"
