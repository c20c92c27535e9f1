"""Messages of the chain protocol and of the control channel.

Plain frozen dataclasses: the engine (``agents.chain``) produces and consumes them,
``agents.wire`` turns them into authenticated raw-Ethernet payloads and back.

NF names are strings; the empty string means "no NF" (an absent entry or a tombstone).
Keys are the bytes of ``agents.keys.flow_key``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


# --- chain protocol bodies -------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """Asker -> tail: which NF serves ``key``? ``nf`` is the asker's proposal ('': ask only,
    insert nothing; the tail answers ``nf`` '' if there is no entry).

    ``seen`` is the newest deletion of ``key`` the asker has heard of (a ``Gone``
    version): a query older than the key's tombstone is stale and must not revive it.
    ``packet`` is the connection's first packet (an IPv4 packet, at most 255 bytes), on
    the asker's first query only: the tail forwards it when it commits a new entry.
    ``lookup`` numbers the asker's lookups (its retries repeat it): the answer names it, so
    that an answer to an earlier lookup of the same key is not taken for this one's.
    """
    key: bytes
    nf: str
    seen: int = 0
    packet: bytes = b""
    lookup: int = 0


@dataclass(frozen=True)
class Answer:
    """Tail, or a head holding it committed -> asker: ``key`` is committed to ``nf`` at ``ver``.

    ``released``: the tail forwarded the packet the asker's query (or write) carried.
    ``lookup``: the asker's lookup this answers (``Query.lookup``).
    """
    key: bytes
    ver: int
    nf: str
    released: bool = False
    lookup: int = 0


@dataclass(frozen=True)
class InsertReq:
    """Asker or tail -> head: insert ``key`` -> ``nf`` unless it is live.

    ``base`` is the key's version as the sender knows it (the tail's record, or the newest
    ``Gone`` the asker heard of); the head ignores a request older than its own version.
    """
    key: bytes
    nf: str
    base: int


@dataclass(frozen=True)
class DeleteReq:
    """Any node -> head: delete ``key`` if it is live at version ``ver`` (0: whatever is live)."""
    key: bytes
    ver: int


@dataclass(frozen=True)
class Write:
    """Down the chain: ``key`` is ``nf`` at version ``ver`` (``nf == ''``: tombstone).

    ``packet``: the first packet of the head's own new connection (see ``Query.packet``);
    the tail forwards it on commit and answers the head (``lookup``: see ``Query``).
    """
    key: bytes
    ver: int
    nf: str
    packet: bytes = b""
    lookup: int = 0


@dataclass(frozen=True)
class Ack:
    """Up the chain: versions of ``key`` up to ``ver`` are committed at the tail.

    ``nf`` is the value of version ``ver`` ('' for a deletion): a predecessor that never
    received that write (its sender failed during a reconfiguration) takes it from here.
    """
    key: bytes
    ver: int
    nf: str


@dataclass(frozen=True)
class Gone:
    """Versions of ``key`` below ``ver`` are deleted: drop cached answers and pending deletes."""
    key: bytes
    ver: int


@dataclass(frozen=True)
class SyncEntry:
    key: bytes
    ver: int
    nf: str
    committed: bool


@dataclass(frozen=True)
class Sync:
    """Reconfiguration: a batch of entries pushed to a node of their new chain."""
    entries: tuple[SyncEntry, ...]


@dataclass(frozen=True)
class SyncDone:
    """Reconfiguration: the sender has pushed everything it owes for the frame's epoch."""


Body = Union[Query, Answer, InsertReq, DeleteReq, Write, Ack, Gone, Sync, SyncDone]


@dataclass(frozen=True)
class Frame:
    """One message on a reliable FIFO link between two chain nodes.

    ``seq`` numbers data frames per link from 1 (0: a pure link ack, ``body is None``);
    ``ack`` acknowledges every frame of the reverse direction up to that number.
    ``src_inc`` / ``dst_inc`` are incarnations (the epoch a node was created in), so that
    a restarted node gets fresh links; ``dst_inc == 0`` means "not known yet".
    ``epoch`` is the sender's view epoch when the frame was made.
    """
    src: str
    src_inc: int
    dst_inc: int
    epoch: int
    seq: int
    ack: int
    body: Body | None


# --- control channel (controller <-> LB agents) ----------------------------------------

@dataclass(frozen=True)
class NFInfo:
    name: str
    mac: str
    state: str  # "active" | "draining" | "failed"


@dataclass(frozen=True)
class LBInfo:
    """An LB node: its MAC on the switch, and on the LB cluster network ('' if it has none).

    ``port`` is its switch port and ``slot`` its place in the gateway's ``bundle`` list,
    counted from 1 (0: not known); a slot keeps its place while other nodes come and go.
    ``since`` is the epoch it was admitted in (0: not known): a node admitted again under its
    name gets a later one, and the chain engine treats it as a new life (``View.since``).
    """
    name: str
    mac: str
    cluster_mac: str = ""
    port: int = 0
    slot: int = 0
    since: int = 0


@dataclass(frozen=True)
class ViewMsg:
    """Controller -> agents: the membership view."""
    epoch: int
    chain_len: int
    mode: str
    lbs: tuple[LBInfo, ...]
    nfs: tuple[NFInfo, ...]


@dataclass(frozen=True)
class Heartbeat:
    """Agent -> controller: alive, at view ``epoch``, holding ``entries`` table entries."""
    lb: str
    epoch: int
    entries: int


@dataclass(frozen=True)
class Hello:
    """Agent -> agent over the LB cluster network: that path works (``agents.paths``)."""
    lb: str
    epoch: int
    seq: int


Message = Union[Frame, ViewMsg, Heartbeat, Hello]
