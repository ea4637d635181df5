"""The machine: one segment holding what every run has, whatever it runs.

Control words (stop flag, start barrier, finding counters, wait_var hash
buckets), per-CPU state (heartbeat, status, current operation, the lock a CPU
is waiting on, counters), per-CPU trace rings, finding slots, RCU and SRCU
state, and the page-frame pool.  Scenario state lives in further segments
registered with `add_segment`; a machine-wide address names (segment, byte).

CPU slots: 0..ncpus-1 are the worker CPUs, then the grace-period kthread,
then the boot CPU (the runner itself, for setup and teardown).
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from shm.checks import Check, check_by_code
from shm.events import KIND_INDEX, KINDS, STOPS_THE_RUN, TRACE_LEN, address, split_address
from shm.layout import Layout, LayoutError, Region
from shm.pool import Pool
from shm.rcu import Rcu
from shm.segment import Segment
from shm.srcu import Srcu

_LOCK_WORDS = {"spin_owner", "mutex_owner", "rwsem_count", "sequence", "refs", "pcref_flags"}
MAX_CPUS = 64
MAX_FINDINGS = 64
SAMPLES_PER_CHECK = 4
CHECK_SLOTS = 64
WAKE_BUCKETS = 64
RUN_INFO_BYTES = 1024
MAX_WINDOWS = 128
WINDOW_NAME_BYTES = 64
OTHER_WINDOWS = "(windows past the table)"

CONTROL = np.dtype(
    [
        ("stop", "<i4"),
        ("go", "<i4"),
        ("ready", "<i4"),
        ("nfindings", "<i4"),
        ("keep_going", "<i4"),
        ("nowait_fail_ppm", "<i4"),
        ("seed", "<i8"),
        ("kind_counts", "<i4", (16,)),
        ("wake_var", "<i4", (WAKE_BUCKETS,)),
        ("check_code", "<i4", (CHECK_SLOTS,)),
        ("check_count", "<i4", (CHECK_SLOTS,)),
        ("first_seen", "<i4"),
        ("after_first", "<i4"),
        ("run_info", f"S{RUN_INFO_BYTES}"),
    ]
)

CPU_STATUS = ("idle", "running", "done", "crashed", "killed")
CPU_OFFLINE = CPU_STATUS.index("crashed")  # this and after: the CPU takes no IPI
NSTATS = 128

CPU_STATE = np.dtype(
    [
        ("pid", "<i4"),
        ("status", "<i4"),
        ("op", "<i4"),
        ("irqs_disabled", "<i4"),
        ("heartbeat", "<i8"),
        ("waiting_on", "<i8"),
        ("step", "<i8"),
        ("stats", "<i8", (NSTATS,)),
        ("wait_ns", "<i8"),
        ("run_ns", "<i8"),
        ("lock_waits", "<i8"),
        ("ipi_waits", "<i8"),
        ("lock_races", "<i8"),
        ("pad", "<i8", (6,)),
    ]
)
assert CPU_STATE.itemsize % 64 == 0

FINDING = np.dtype(
    [
        ("valid", "<i4"),
        ("check", "<i4"),
        ("cpu", "<i4"),
        ("op", "<i4"),
        ("step", "<i8"),
        ("message", "S256"),
        ("objects", "S760"),
        ("site", "S120"),
        ("trace", "<i8", (TRACE_LEN,)),
    ]
)


def machine_layout(params: dict) -> Layout:
    ncpus = int(params["ncpus"])
    nslots = ncpus + 2
    regions = [
        Region("control", CONTROL),
        Region("cpu", CPU_STATE, nslots),
        Region("trace", np.dtype(("<i8", (TRACE_LEN,))), nslots),
        Region("finding", FINDING, MAX_FINDINGS),
        Region("window_key", np.dtype("<i4"), MAX_WINDOWS),
        Region("window_name", np.dtype(f"S{WINDOW_NAME_BYTES}"), MAX_WINDOWS),
        Region("window_stat", np.dtype(("<i8", (MAX_WINDOWS, 2))), nslots),
    ]
    regions += Rcu.regions(nslots)
    regions += Srcu.regions(nslots, int(params.get("srcu_domains", 1)))
    regions += Pool.regions(int(params["pool_pages"]), int(params["page_size"]))
    return Layout("machine", regions, params)


class Machine:
    """The machine segment, attached in one process, with its subsystems."""

    def __init__(self, seg: Segment):
        self.seg = seg
        self.params = seg.layout.params
        self.ncpus = int(self.params["ncpus"])
        if not 1 <= self.ncpus <= MAX_CPUS - 2:
            raise LayoutError(f"ncpus must be between 1 and {MAX_CPUS - 2}")
        self.nslots = self.ncpus + 2
        self.gp_cpu = self.ncpus
        self.boot_cpu = self.ncpus + 1
        self.mem = seg.mem
        self.raw = seg.raw
        self.segments: list[Segment] = [seg]
        self._handles: dict = {}
        self.mems = [seg.mem]
        self.raws = [seg.raw]
        lo = seg.layout.offset
        self.stop_off = lo("control", 0, "stop")
        self.go_off = lo("control", 0, "go")
        self.ready_off = lo("control", 0, "ready")
        self.nfindings_off = lo("control", 0, "nfindings")
        self.kind_counts_off = lo("control", 0, "kind_counts")
        self.check_code_off = lo("control", 0, "check_code")
        self.check_count_off = lo("control", 0, "check_count")
        self.first_seen_off = lo("control", 0, "first_seen")
        self.after_first_off = lo("control", 0, "after_first")
        self.wake_var_off = lo("control", 0, "wake_var")
        self.control = seg.view("control")
        self.cpus = seg.view("cpu")
        self.traces = seg.view("trace")
        self.finding_slots = seg.view("finding")
        self.cpu_stride = seg.layout.stride("cpu")
        self.window_key_off = lo("window_key")
        self.window_names = seg.view("window_name")
        self.window_stats = seg.view("window_stat")
        self.rcu = Rcu(self)
        self.srcu = [Srcu(self, i) for i in range(int(self.params.get("srcu_domains", 1)))]
        self.pool = Pool(self)

    @classmethod
    def create(
        cls,
        run_id: str,
        ncpus: int,
        pool_pages: int = 256,
        page_size: int = 64,
        srcu_domains: int = 1,
        keep_going: bool = False,
        seed: int = 0,
        nowait_fail_rate: float = 0.0,
    ) -> Machine:
        if not 1 <= ncpus <= MAX_CPUS - 2:
            raise ValueError(f"cpus must be between 1 and {MAX_CPUS - 2}")
        params = {
            "ncpus": ncpus,
            "pool_pages": pool_pages,
            "page_size": page_size,
            "srcu_domains": srcu_domains,
        }
        seg = Segment.create(machine_layout(params), run_id, 0)
        m = cls(seg)
        m.control["keep_going"] = int(keep_going)
        m.control["seed"] = seed
        m.control["nowait_fail_ppm"] = int(round(nowait_fail_rate * 1_000_000))
        m.cpus["op"] = -1
        m.pool.init_free_list()
        return m

    @classmethod
    def attach(cls, name: str) -> Machine:
        h = Segment.read_header(name)
        if h["layout"] != "machine":
            raise LayoutError(f"segment {name} holds layout {h['layout']!r}, not a machine")
        return cls(Segment.attach(name, machine_layout(h["params"])))

    def handle(self, cls, seg: int, off: int):
        """The handle (Spinlock, Rwsem, Refcount...) of the word at (segment, offset), made once per
        process: handles hold no state of their own, so one serves every caller."""
        key = seg << 40 | off
        h = self._handles.get(key)
        if h is None or type(h) is not cls:
            h = self._handles[key] = cls(self, seg, off)
        return h

    def add_segment(self, seg: Segment) -> int:
        self.segments.append(seg)
        self.mems.append(seg.mem)
        self.raws.append(seg.raw)
        seg.mem.tag = seg.raw.tag = len(self.segments) - 1
        return len(self.segments) - 1

    # -- addresses -------------------------------------------------------
    def describe(self, addr: int) -> str:
        seg, off = split_address(addr)
        if seg >= len(self.segments):
            return f"{addr:#x}"
        s = self.segments[seg]
        name = f"{s.layout.name}:{s.layout.describe(off)}"
        head, _, last = name.rpartition(".")
        return head if last in _LOCK_WORDS else name

    def address(self, seg: Segment, off: int) -> int:
        return address(self.segments.index(seg), off)

    # -- per-CPU ---------------------------------------------------------
    def cpu_off(self, cpu: int, field: str) -> int:
        return self.seg.layout.offset("cpu", cpu, field)

    def trace_off(self, cpu: int) -> int:
        return self.seg.layout.offset("trace", cpu)

    # -- windows -------------------------------------------------------------
    def slot_of(self, table_off: int, nslots: int, key: int) -> int:
        """The slot of a non-zero `key` in an open-addressed table of int32 keys in this segment,
        claimed on first use by any process; -1 when the table is full."""
        mem = self.mem
        for k in range(nslots):
            i = (key + k) % nslots
            off = table_off + 4 * i
            have = mem.load32(off)
            if have == 0:
                have = mem.cmpxchg32(off, 0, key) or key
            if have == key:
                return i
        return -1

    def window_slot(self, name: str) -> int:
        """The slot of a window name in the machine's table (the last one takes the overflow)."""
        i = self.slot_of(self.window_key_off, MAX_WINDOWS - 1, zlib.crc32(name.encode()) & 0x7FFFFFFF or 1)
        if i < 0:
            return MAX_WINDOWS - 1
        self.window_names[i] = name.encode()[:WINDOW_NAME_BYTES]
        return i

    def window_name(self, slot: int) -> str:
        return OTHER_WINDOWS if slot == MAX_WINDOWS - 1 else bytes(self.window_names[slot]).decode(errors="replace")

    def window_stat_off(self, cpu: int) -> int:
        return self.seg.layout.offset("window_stat", cpu)

    def windows(self) -> dict[str, dict[str, int]]:
        """Per window: how often a CPU reached it, and how often a preemption or delay landed there."""
        totals = self.window_stats.sum(axis=0)
        out = {}
        for i in range(MAX_WINDOWS):
            hits, preempted = int(totals[i][0]), int(totals[i][1])
            if not hits:
                continue
            out[self.window_name(i)] = {"hits": hits, "preempted": preempted}
        return dict(sorted(out.items()))

    # -- run control -----------------------------------------------------
    @property
    def keep_going(self) -> bool:
        return bool(self.mem.load32(self.seg.layout.offset("control", 0, "keep_going")))

    @property
    def nowait_fail_ppm(self) -> int:
        return self.mem.load32(self.seg.layout.offset("control", 0, "nowait_fail_ppm"))

    def stop_requested(self) -> bool:
        return self.raw.load32(self.stop_off) != 0

    def request_stop(self) -> None:
        """Ask every CPU to leave at its next operation boundary; a CPU waiting for memory
        gives up (its allocation fails)."""
        if self.raw.cmpxchg32(self.stop_off, 0, 1) == 0:
            self.raw.futex_wake(self.stop_off, -1)
            self.pool.wake_waiters()

    def wake_bucket(self, addr: int) -> int:
        return self.wake_var_off + 4 * ((addr * 0x9E3779B1 >> 7) % WAKE_BUCKETS)

    # -- findings --------------------------------------------------------
    def record_finding(
        self,
        check: Check,
        cpu: int,
        op: int,
        step: int,
        message: str,
        objects: dict | None = None,
        trace=None,
        site: str = "",
    ) -> None:
        """Count the finding under its check and kind; keep it (the first few of each check,
        up to MAX_FINDINGS in all) with its objects and trace; stop the run unless keep-going.

        A run that stops at its first finding keeps that one only: what CPUs
        report while they leave (a deadlocked CPU's lock cycle after its AA
        report, a second holder's bad unlock) is its consequence, counted
        in `after_first` and not kept, so that a replay sees the same."""
        if not self.keep_going and self.raw.cmpxchg32(self.first_seen_off, 0, 1):
            self.raw.fetch_add32(self.after_first_off, 1)
            return
        self.raw.fetch_add32(self.kind_counts_off + 4 * KIND_INDEX[check.kind], 1)
        seen = self._count_check(check.code)
        if seen < SAMPLES_PER_CHECK:
            n = self.raw.fetch_add32(self.nfindings_off, 1)
            if n < MAX_FINDINGS:
                slot = self.finding_slots[n : n + 1]
                slot["check"] = check.code
                slot["cpu"] = cpu
                slot["op"] = op
                slot["step"] = step
                slot["message"] = message.encode(errors="replace")[:255]
                slot["objects"] = _json_clip(objects or {}, 759)
                slot["site"] = site.encode(errors="replace")[:119]
                if trace is not None:
                    slot["trace"][0] = trace
                self.mem.store32(self.seg.layout.offset("finding", n, "valid"), 1)
        if not self.keep_going or check.kind in STOPS_THE_RUN:
            self.request_stop()

    def _count_check(self, code: int) -> int:
        """Add one to the check's counter; the count before (the table full: counted by kind only)."""
        i = self.slot_of(self.check_code_off, CHECK_SLOTS, code)
        return SAMPLES_PER_CHECK if i < 0 else self.raw.fetch_add32(self.check_count_off + 4 * i, 1)

    def finding_count(self) -> int:
        """Findings recorded so far (every one, whether its sample was kept or not)."""
        return int(self.control["kind_counts"][0].sum())

    def findings_after_first(self) -> int:
        return self.mem.load32(self.after_first_off)

    def kind_counts(self) -> dict[str, int]:
        counts = self.control["kind_counts"][0]
        return {k: int(counts[i]) for i, k in enumerate(KINDS)}

    def check_counts(self) -> dict[str, int]:
        """Findings by check id, every one counted (the samples kept are fewer)."""
        codes, counts = self.control["check_code"][0], self.control["check_count"][0]
        out = {}
        for code, n in zip(codes, counts):
            if code and n:
                c = check_by_code(int(code))
                out[c.id if c else f"check#{int(code)}"] = int(n)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def findings(self) -> list[dict]:
        out = []
        n = min(self.mem.load32(self.nfindings_off), MAX_FINDINGS)
        for i in range(n):
            s = self.finding_slots[i]
            if not s["valid"]:
                continue
            try:
                objects = json.loads(bytes(s["objects"]).decode(errors="replace") or "{}")
            except json.JSONDecodeError:
                objects = {"raw": bytes(s["objects"]).decode(errors="replace")}
            c = check_by_code(int(s["check"]))
            out.append(
                {
                    "check": c.id if c else f"check#{int(s['check'])}",
                    "kind": c.kind if c else "invariant",
                    "cpu": int(s["cpu"]),
                    "op": int(s["op"]),
                    "step": int(s["step"]),
                    "message": bytes(s["message"]).decode(errors="replace"),
                    "objects": objects,
                    "site": [f for f in bytes(s["site"]).decode(errors="replace").split("<") if f],
                    "trace": [int(w) for w in s["trace"]],
                }
            )
        return out

    # -- what the run is (for `inspect`) -----------------------------------
    def set_run_info(self, info: dict) -> None:
        self.control["run_info"] = json.dumps(info, separators=(",", ":")).encode()[:RUN_INFO_BYTES]

    def run_info(self) -> dict:
        try:
            return json.loads(bytes(self.control["run_info"][0]).decode() or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def close(self) -> None:
        del self.control, self.cpus, self.traces, self.finding_slots, self.window_names, self.window_stats
        self.pool.close()
        self.rcu.close()
        for s in self.srcu:
            s.close()
        for seg in self.segments:
            seg.close()

    def unlink(self) -> None:
        for seg in self.segments:
            if seg.owner:
                seg.unlink()


def _json_clip(objects: dict, limit: int) -> bytes:
    data = json.dumps(objects, default=str, separators=(",", ":")).encode()
    if len(data) <= limit:
        return data
    return json.dumps({"truncated": data[: limit - 40].decode(errors="ignore")}).encode()[:limit]
