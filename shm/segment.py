"""POSIX shared-memory segments: naming, header check, and cleanup on every exit path.

Segments are created through posix_ipc (not multiprocessing.shared_memory,
whose resource tracker unlinks and warns at the wrong times).  A name is
``mmtorture-<creator pid>-<run id>[-<xdist worker and test-run uid>]-<n>``, mode 0600.  The
creating process unlinks what it created at exit; ``clean_dead_segments``
removes segments whose creator is gone (a runner killed with SIGKILL).
"""

from __future__ import annotations

import atexit
import json
import mmap
import os
import re
import secrets
from typing import Any

import numpy as np
import posix_ipc

from shm._atomic import Memory
from shm.layout import HEADER, LAYOUT_VERSION, MAGIC, Layout, LayoutError

PREFIX = "mmtorture"
SHM_DIR = "/dev/shm"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)(?:-([A-Za-z0-9]+))?-(\d+)$")

_created: dict[str, int] = {}


def new_run_id() -> str:
    return secrets.token_hex(4)


def worker_tag() -> str:
    """The pytest-xdist worker id and test-run uid, when there are (names never collide)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    return re.sub(r"[^A-Za-z0-9]", "", worker + uid[:8])


def segment_name(run_id: str, n: int, pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    worker = worker_tag()
    mid = f"-{worker}" if worker else ""
    return f"{PREFIX}-{pid}-{run_id}{mid}-{n}"


def parse_name(name: str) -> tuple[int, str, str, int] | None:
    """(creator pid, run id, worker, n) of one of our segment names, else None."""
    m = _NAME_RE.match(name.lstrip("/"))
    if not m:
        return None
    return int(m.group(1)), m.group(2), m.group(3) or "", int(m.group(4))


def _unlink_quietly(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory("/" + name)
        return True
    except posix_ipc.ExistentialError:
        return False


@atexit.register
def _unlink_created_at_exit() -> None:
    for name, pid in list(_created.items()):
        if pid == os.getpid():
            _unlink_quietly(name)
            _created.pop(name, None)


class Segment:
    """One mapped segment with its layout; views and atomics over the same bytes."""

    def __init__(self, name: str, layout: Layout, shm: posix_ipc.SharedMemory, owner: bool):
        self.name = name
        self.layout = layout
        self.owner = owner
        self._map = mmap.mmap(shm.fd, layout.size)
        shm.close_fd()
        self.mem = Memory(self._map)
        self.raw = Memory(self._map, counted=False)
        self._views: dict[str, np.ndarray] = {}

    @classmethod
    def create(cls, layout: Layout, run_id: str, n: int) -> Segment:
        name = segment_name(run_id, n)
        shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=layout.size)
        _created[name] = os.getpid()
        seg = cls(name, layout, shm, owner=True)
        hdr = np.ndarray((1,), dtype=HEADER, buffer=seg._map, offset=0)
        params = json.dumps(layout.params, sort_keys=True).encode()
        if len(params) > HEADER["params"].itemsize:
            seg.unlink()
            raise LayoutError(f"layout {layout.name}: parameters too long for the header")
        hdr["version"] = LAYOUT_VERSION
        hdr["creator"] = os.getpid()
        hdr["size"] = layout.size
        hdr["digest"] = layout.digest.encode()
        hdr["name"] = layout.name.encode()
        hdr["params"] = params
        hdr["magic"] = MAGIC
        del hdr
        return seg

    @staticmethod
    def read_header(name: str) -> dict:
        """The header of an existing segment: its layout name, digest and parameters."""
        try:
            shm = posix_ipc.SharedMemory("/" + name.lstrip("/"))
        except posix_ipc.ExistentialError:
            raise LayoutError(f"no shared-memory segment named {name}") from None
        try:
            if shm.size < HEADER.itemsize:
                raise LayoutError(f"segment {name} is too small to be an mmtorture segment")
            with mmap.mmap(shm.fd, HEADER.itemsize, prot=mmap.PROT_READ) as m:
                hdr = np.frombuffer(m, dtype=HEADER, count=1)[0]
                out: dict[str, Any] = {
                    "magic": bytes(hdr["magic"]),
                    "version": int(hdr["version"]),
                    "creator": int(hdr["creator"]),
                    "size": int(hdr["size"]),
                    "digest": bytes(hdr["digest"]).decode(errors="replace"),
                    "layout": bytes(hdr["name"]).decode(errors="replace"),
                    "params": bytes(hdr["params"]).decode(errors="replace"),
                }
                del hdr
        finally:
            shm.close_fd()
        if out["magic"] != MAGIC:
            raise LayoutError(f"segment {name} is not an mmtorture segment (bad magic)")
        try:
            out["params"] = json.loads(out["params"] or "{}")
        except json.JSONDecodeError:
            raise LayoutError(f"segment {name} has a corrupt header") from None
        return out

    @classmethod
    def attach(cls, name: str, layout: Layout) -> Segment:
        h = cls.read_header(name)
        if h["version"] != LAYOUT_VERSION or h["digest"] != layout.digest:
            raise LayoutError(
                f"segment {name} has layout {h['layout']!r} v{h['version']} digest {h['digest']}, "
                f"expected {layout.name!r} v{LAYOUT_VERSION} digest {layout.digest}"
            )
        if h["size"] != layout.size:
            raise LayoutError(f"segment {name} is {h['size']} bytes, layout wants {layout.size}")
        shm = posix_ipc.SharedMemory("/" + name)
        return cls(name, layout, shm, owner=False)

    def view(self, region: str) -> np.ndarray:
        v = self._views.get(region)
        if v is None:
            v = self._views[region] = self.layout.view(self._map, region)
        return v

    def offset(self, region: str, index: int = 0, field: str | None = None) -> int:
        return self.layout.offset(region, index, field)

    def close(self) -> None:
        """Drop every view and the mapping (views must not be used after this)."""
        self._views.clear()
        if self.mem is not None:
            self.mem.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a numpy view still alive elsewhere; the mapping goes with the process

    def unlink(self) -> None:
        _unlink_quietly(self.name)
        _created.pop(self.name, None)


def list_segments() -> list[str]:
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if parse_name(n))
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_dead_segments(all_runs: bool = False) -> list[str]:
    """Unlink segments whose creator process is dead (or every one, with all_runs)."""
    removed = []
    for name in list_segments():
        parsed = parse_name(name)
        if parsed is None:
            continue
        if (all_runs or not _alive(parsed[0])) and _unlink_quietly(name):
            removed.append(name)
    return removed
