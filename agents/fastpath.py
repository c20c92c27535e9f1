"""The in-kernel fast path's shell: load ``fastpath.bpf.c`` (built by ``make setup``) on an
LB host's data interface and keep its connection map in step with the agent's table.

The packet logic stays in ``agents.datapath`` (sans-I/O): it says which connections go in
the map (``FastPut``) and which leave it (``FastDel``), and it reads their activity
(``Datapath.fast_seen``). This module only translates those to bpf(2) calls:

- the object is opened and loaded with Debian's libbpf (``libbpf.so.1``, through ctypes);
- the program is attached with ``BPF_LINK_CREATE``: the agent holds the link's file
  descriptor, so the program is detached when the agent exits, however it exits (a
  crashed agent's map never forwards after its node was removed);
- map updates and reads are libbpf's thin bpf(2) wrappers (``bpf_map_update_elem``,
  ``bpf_map_lookup_elem``, ...): one per connection that enters or leaves the map, and one
  per connection that would end idle (``FastRead``), never a scan of the whole map.

``FastPath.open`` raises ``FastPathError`` (with the reason) where the program cannot be
loaded or attached: the agent says so once and runs the Python path.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from pathlib import Path

__all__ = ["FastPath", "FastPathError", "FASTPATHS", "OBJECT", "ATTACH_MODES", "KEY_LEN",
           "ENTRY"]

FASTPATHS = ("xdp", "off")    # the in-kernel fast path, or none: the default first

REPO = Path(__file__).resolve().parent.parent
OBJECT = REPO / "build" / "fastpath.bpf.o"    # scripts/setup.sh builds it
PROGRAM = "chainlb_fastpath"
KEY_LEN = 13                                  # agents.keys: an IPv4 key
ENTRY = struct.Struct("=12s4xQQQ")            # struct entry: eth, seen_ns, packets, bytes
STAT_TX, STAT_PASS, STAT_MISS = range(3)      # the program's per-CPU counters

# XDP attach modes: generic (the kernel's hook, after the driver: works on every interface)
# and native (the driver's). A veth in native mode drops the frames its program sends back
# out (XDP_TX) unless its peer has NAPI (an XDP program of its own): the testbed's veths to
# the switch do not, so it uses generic.
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 2, 4
ATTACH_MODES = {"generic": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}

_BPF_XDP = 37                                 # enum bpf_attach_type
_BPF_ANY = 0


class FastPathError(Exception):
    """The fast path cannot run here (the reason is the message)."""


def _libbpf():
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise FastPathError(f"libbpf not found ({e}): install libbpf1 (sudo make setup)") from None
    vp, i = ctypes.c_void_p, ctypes.c_int
    for fn, res, args in (
            ("bpf_object__open_file", vp, [ctypes.c_char_p, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_program_by_name", vp, [vp, ctypes.c_char_p]),
            ("bpf_object__find_map_fd_by_name", i, [vp, ctypes.c_char_p]),
            ("bpf_program__fd", i, [vp]),
            ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
            ("bpf_map_delete_elem", i, [i, vp]),
            ("bpf_map_lookup_and_delete_elem", i, [i, vp, vp]),
            ("bpf_link_create", i, [i, i, ctypes.c_int, vp]),
            ("bpf_map_lookup_elem", i, [i, vp, vp]),
            ("libbpf_num_possible_cpus", i, []),
            ("libbpf_set_print", vp, [vp])):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    lib.libbpf_set_print(None)            # its messages would go to stderr: ours say why
    return lib


class _LinkOpts(ctypes.Structure):
    """The head of libbpf's ``struct bpf_link_create_opts`` (``sz`` says how much of it)."""
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


def _link_create(lib, prog_fd: int, ifindex: int, flags: int) -> int:
    opts = _LinkOpts(ctypes.sizeof(_LinkOpts), flags, 0)
    fd = lib.bpf_link_create(prog_fd, ifindex, _BPF_XDP, ctypes.byref(opts))
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise OSError(err, os.strerror(err))
    return fd


class FastPath:
    """The fast path on one interface: the attached program and its connection map."""

    def __init__(self, lib, obj, link_fd: int, conns_fd: int, stats_fd: int, mode: str,
                 intf: str):
        self._lib, self._obj, self._link = lib, obj, link_fd
        self._conns, self._stats = conns_fd, stats_fd
        self.mode, self.intf = mode, intf                # the attach mode that worked
        self._cpus = lib.libbpf_num_possible_cpus()    # (checked by ``open``)
        self._key = ctypes.create_string_buffer(KEY_LEN)
        self._val = ctypes.create_string_buffer(ENTRY.size)
        self.errors = 0          # map updates (a full map) or reads the kernel refused

    @classmethod
    def open(cls, intf: str, attach: str = "generic", obj_path: Path | None = None) -> "FastPath":
        """Load ``obj_path`` (default ``OBJECT``) and attach it on ``intf`` in mode ``attach``
        (``ATTACH_MODES``)."""
        obj_path = OBJECT if obj_path is None else obj_path
        if attach not in ATTACH_MODES:
            raise ValueError(f"unknown XDP attach mode {attach!r}; valid: "
                             f"{', '.join(ATTACH_MODES)}")
        if not Path(obj_path).is_file():
            raise FastPathError(f"{obj_path} not built (sudo make setup builds it)")
        try:
            ifindex = socket.if_nametoindex(intf)
        except OSError:
            raise FastPathError(f"no interface {intf!r}") from None
        lib = _libbpf()
        obj = lib.bpf_object__open_file(str(obj_path).encode(), None)
        if not obj:
            raise FastPathError(f"cannot open {obj_path}: {os.strerror(ctypes.get_errno())}")
        try:
            if lib.bpf_object__load(obj) != 0:
                raise FastPathError(f"the kernel refused the program ({obj_path}): "
                                    f"{os.strerror(ctypes.get_errno())}")
            prog = lib.bpf_object__find_program_by_name(obj, PROGRAM.encode())
            conns = lib.bpf_object__find_map_fd_by_name(obj, b"conns")
            stats = lib.bpf_object__find_map_fd_by_name(obj, b"stats")
            if not prog or conns < 0 or stats < 0:
                raise FastPathError(f"{obj_path} lacks {PROGRAM} or its maps: rebuild it")
            prog_fd = lib.bpf_program__fd(prog)
            if lib.libbpf_num_possible_cpus() < 1:
                raise FastPathError("libbpf cannot count this machine's CPUs")
            try:
                link = _link_create(lib, prog_fd, ifindex, ATTACH_MODES[attach])
            except OSError as e:
                raise FastPathError(f"cannot attach XDP ({attach}) to {intf}: "
                                    f"{e.strerror}") from None
            return cls(lib, obj, link, conns, stats, attach, intf)
        except BaseException:
            lib.bpf_object__close(obj)
            raise

    # ------------------------------------------------------------------ the map

    def put(self, key: bytes, eth: bytes) -> bool:
        """Forward ``key``'s packets with Ethernet addresses ``eth`` (12 bytes); an entry
        already there keeps its activity. False if the kernel refused (the map is full)."""
        self._key.raw = key
        if self._lib.bpf_map_lookup_elem(self._conns, self._key, self._val) == 0:
            _, seen, packets, nbytes = ENTRY.unpack(self._val.raw)
        else:
            seen = packets = nbytes = 0
        self._val.raw = ENTRY.pack(eth, seen, packets, nbytes)
        if self._lib.bpf_map_update_elem(self._conns, self._key, self._val, _BPF_ANY) != 0:
            self.errors += 1
            # refused means not in the map: an entry there before must not forward on
            self._lib.bpf_map_delete_elem(self._conns, self._key)
            return False
        return True

    def delete(self, key: bytes) -> float:
        """Stop forwarding ``key``; when the kernel last forwarded one of its packets (as
        ``seen``: 0.0 if never or not in the map), which the agent's tracking must keep."""
        self._key.raw = key
        if self._lib.bpf_map_lookup_and_delete_elem(self._conns, self._key, self._val) == 0:
            return ENTRY.unpack(self._val.raw)[1] / 1e9
        if ctypes.get_errno() != errno.ENOENT:            # (ENOENT: not there)
            self.errors += 1
            if self._lib.bpf_map_delete_elem(self._conns, self._key) != 0 \
                    and ctypes.get_errno() != errno.ENOENT:
                raise FastPathError(f"cannot remove a connection from the fast path's map: "
                                    f"{os.strerror(ctypes.get_errno())}")
        return 0.0

    def seen(self, keys) -> list[tuple[bytes, float]]:
        """(key, when the kernel last forwarded one of its packets, in time.monotonic()
        seconds; 0.0 if never or not in the map) for each of ``keys`` it could read: a key
        the kernel refused to read is left out (asked again later, never taken as idle)."""
        out = []
        key, val, lookup, conns = self._key, self._val, self._lib.bpf_map_lookup_elem, self._conns
        for k in keys:
            key.raw = k
            if lookup(conns, key, val) == 0:
                out.append((k, ENTRY.unpack(val.raw)[1] / 1e9))
            elif ctypes.get_errno() == errno.ENOENT:
                out.append((k, 0.0))
            else:
                self.errors += 1
        return out

    def stats(self) -> dict[str, int]:
        """The program's counters, summed over CPUs: tx (forwarded here), pass, miss."""
        out = {}
        key = ctypes.c_uint32()
        vals = (ctypes.c_uint64 * self._cpus)()
        for name, index in (("tx", STAT_TX), ("pass", STAT_PASS), ("miss", STAT_MISS)):
            key.value = index
            if self._lib.bpf_map_lookup_elem(self._stats, ctypes.byref(key), vals) != 0:
                out[name] = 0
            else:
                out[name] = sum(vals)
        return out

    def close(self) -> None:
        """Detach (the link closes) and free the maps."""
        if self._link >= 0:
            os.close(self._link)
            self._link = -1
            self._lib.bpf_object__close(self._obj)
