"""The controlled scheduler's shared segment: the token, each participant's state, the
recorded deviations, and (when profiling) every access of each participant per operation.

Whoever holds the token reads and writes it; the runner reads what the run
recorded.  Every word here is the harness's own, accessed through the
segment's uncounted alias: it is never a step of the CPU that touches it.
"""

from __future__ import annotations

import numpy as np

from shm import Segment
from shm.events import ARG_BITS
from shm.layout import Layout, Region

RUNNABLE, BLOCKED, YIELDED, EXITED = 0, 1, 2, 3
CONTROLLED, DISSOLVED = 0, 1
CAPACITY = 1 << 16
AT_BOUNDARY = -1
MAX_PROFILE_OPS = 4096

CONTROL = np.dtype(
    [
        ("token", "<i4"),
        ("mode", "<i4"),
        ("wedged", "<i4"),
        ("next_change", "<i4"),
        ("first", "<i4"),
        ("weak_run", "<i4"),
        ("diverged", "<i4"),
        ("div_slot", "<i4"),
        ("div_op", "<i4"),
        ("div_point", "<i4"),
        ("div_target", "<i4"),
        ("div_unreached", "<i4"),
        ("spinners", "<i4"),
        ("step", "<i8"),
        ("switches", "<i8"),
        ("div_step", "<i8"),
        ("quiet", "<i8"),
        ("accesses", "<i8"),
        ("boundaries", "<i8"),
    ],
    align=True,
)
SLOT = np.dtype(
    [
        ("turn", "<i4"),
        ("state", "<i4"),
        ("watch_seg", "<i4"),
        ("watch_bits", "<i4"),
        ("watch_off", "<i8"),
        ("watch_val", "<i8"),
        ("timed", "<i4"),
        ("ndev", "<i4"),
        ("overflow", "<i4"),
        ("prio", "<i8"),
        ("nrec", "<i8"),
        ("sleeping", "<i4"),
        ("held_until", "<i8"),
        ("free_at", "<i8"),  # 1 + the trace sequence number from which the participant ran free
    ],
    align=True,
)
DEVIATION = np.dtype([("op", "<i4"), ("point", "<i4"), ("target", "<i4"), ("pad", "<i4")])


def sched_layout(nparts: int, capacity: int = CAPACITY, rec_cap: int = 0) -> Layout:
    """The scheduler's segment; with rec_cap, room for a profile: every access of each participant
    (up to rec_cap) and where each of its operations starts in that record."""
    regions = [Region("control", CONTROL), Region("slot", SLOT, nparts), Region("dev", DEVIATION, nparts * capacity)]
    if rec_cap:
        regions += [
            Region("rec", np.dtype("<i8"), nparts * rec_cap),
            Region("opstart", np.dtype("<i8"), nparts * MAX_PROFILE_OPS),
            Region("opclock", np.dtype("<i8"), nparts * MAX_PROFILE_OPS),
        ]
    return Layout("sched", regions, {"nparts": nparts, "capacity": capacity, "rec_cap": rec_cap})


def describe_point(op: int, point: int) -> str:
    """A point of a schedule in words: `operation 3 before shared access 12`."""
    if point == AT_BOUNDARY:
        return f"the end of operation {op}"
    if point < AT_BOUNDARY:
        return f"operation {op} window {AT_BOUNDARY - 1 - point}"
    return f"operation {op} before shared access {point}"


def where_in_operation(point: int) -> str:
    """A preemption's point within its operation, in the words of a race diagram's column."""
    if point == AT_BOUNDARY:
        return "between operations"
    if point < AT_BOUNDARY:
        return f"in window {AT_BOUNDARY - 1 - point}"
    return f"before shared access {point}"


SWITCH_STEP_BITS = ARG_BITS - 11  # the switch event's argument: step << 11 | state << 9 | deviated << 8 | target


def switch_arg(step: int, target: int, deviated: bool, state: int) -> int:
    """A `switch` trace event's argument: whom the token went to, whether the schedule records it
    (a preemption) or the CPU could not go on (its state), and the decision's number, which orders
    the turns of all CPUs into one time line (stress.race)."""
    return ((step & ((1 << SWITCH_STEP_BITS) - 1)) << 11) | (state << 9) | (int(deviated) << 8) | (target & 0xFF)


def split_switch(arg: int) -> tuple[int, int, bool, int]:
    """switch_arg's (step, target, deviated, state)."""
    return arg >> 11, arg & 0xFF, bool(arg >> 8 & 1), arg >> 9 & 3


def splitmix64(x: int) -> int:
    """One step of splitmix64: a stateless hash of (seed, step), the same in every process."""
    z = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class SchedState:
    """The scheduler's segment: the token, each participant's state, the recorded deviations."""

    def __init__(self, seg: Segment):
        self.seg = seg
        self.mem = seg.raw
        lay = seg.layout
        self.nparts = int(lay.params["nparts"])
        self.capacity = int(lay.params["capacity"])
        self.rec_cap = int(lay.params.get("rec_cap", 0))
        self.control = seg.view("control")
        self.slots = seg.view("slot")
        self.devs = seg.view("dev")
        c = lambda f: lay.offset("control", 0, f)  # noqa: E731
        self.token_off, self.mode_off, self.wedged_off = c("token"), c("mode"), c("wedged")
        self.next_change_off, self.weak_run_off = c("next_change"), c("weak_run")
        self.step_off, self.switches_off = c("step"), c("switches")
        self.quiet_off, self.accesses_off = c("quiet"), c("accesses")
        self.boundaries_off = c("boundaries")
        self.diverged_off = c("diverged")
        s = lambda i, f: lay.offset("slot", i, f)  # noqa: E731
        n = range(self.nparts)
        self.turn_off = [s(i, "turn") for i in n]
        self.state_off = [s(i, "state") for i in n]
        self.wseg_off = [s(i, "watch_seg") for i in n]
        self.wbits_off = [s(i, "watch_bits") for i in n]
        self.woff_off = [s(i, "watch_off") for i in n]
        self.wval_off = [s(i, "watch_val") for i in n]
        self.timed_off = [s(i, "timed") for i in n]
        self.ndev_off = [s(i, "ndev") for i in n]
        self.overflow_off = [s(i, "overflow") for i in n]
        self.prio_off = [s(i, "prio") for i in n]
        self.nrec_off = [s(i, "nrec") for i in n]
        self.sleeping_off = [s(i, "sleeping") for i in n]
        self.held_until_off = [s(i, "held_until") for i in n]
        self.free_at_off = [s(i, "free_at") for i in n]
        self.spinners_off = c("spinners")
        self.dev_off = [lay.offset("dev", i * self.capacity) for i in n]

    @classmethod
    def create(cls, run_id: str, n: int, nparts: int, rec_cap: int = 0) -> SchedState:
        return cls(Segment.create(sched_layout(nparts, rec_cap=rec_cap), run_id, n))

    @classmethod
    def attach(cls, name: str) -> SchedState:
        h = Segment.read_header(name)
        p = h["params"]
        return cls(Segment.attach(name, sched_layout(int(p["nparts"]), int(p["capacity"]), int(p.get("rec_cap", 0)))))

    def profile(self) -> list[list[tuple[int, np.ndarray]]]:
        """Per participant, per operation: the run's access count when it began, and the accesses
        it made (tag << 56 | kind << 48 | offset)."""
        if not self.rec_cap:
            return []
        rec, starts, clocks = self.seg.view("rec"), self.seg.view("opstart"), self.seg.view("opclock")
        out = []
        for i in range(self.nparts):
            n = min(int(self.slots["nrec"][i]), self.rec_cap)
            mine = rec[i * self.rec_cap : i * self.rec_cap + n]
            lo = i * MAX_PROFILE_OPS
            ops = [
                (int(clocks[lo + o]), int(starts[lo + o])) for o in range(MAX_PROFILE_OPS) if 0 <= starts[lo + o] <= n
            ]
            ends = [s for _, s in ops[1:]] + [n]
            out.append([(c, mine[s:e].copy()) for (c, s), e in zip(ops, ends)])
        return out

    def close(self) -> None:
        del self.control, self.slots, self.devs
        self.seg.close()

    # -- what the runner reads -------------------------------------------
    def deviations(self) -> list[list[list[int]]]:
        out = []
        for i in range(self.nparts):
            n = min(int(self.slots["ndev"][i]), self.capacity)
            d = self.devs[i * self.capacity : i * self.capacity + n]
            out.append([[int(a), int(b), int(c)] for a, b, c in zip(d["op"], d["point"], d["target"])])
        return out

    def free_at(self) -> list[int]:
        """Per participant, the trace sequence number of its first event once the run was no
        longer controlled (what follows has no single time line); -1 if it never ran free."""
        return [int(v) - 1 for v in self.slots["free_at"]]

    def divergence(self) -> dict | None:
        c = self.control[0]
        if not c["diverged"]:
            return None
        return {
            "step": int(c["div_step"]),
            "cpu": int(c["div_slot"]),
            "op": int(c["div_op"]),
            "point": int(c["div_point"]),
            "target": int(c["div_target"]),
            "unreached": bool(c["div_unreached"]),
        }

    def points(self) -> int:
        """Decisions a replay takes again: all but the access points where the strategy kept the
        default (a replay's countdown stops only where a preemption was recorded)."""
        return self.mem.load64(self.step_off) - self.mem.load64(self.quiet_off)

    def summary(self) -> dict:
        c = self.control[0]
        return {
            "first": int(c["first"]),
            "steps": int(c["step"] - c["quiet"]),
            "decisions": int(c["step"]),
            "accesses": int(c["accesses"]),
            "switches": int(c["switches"]),
            "complete": not bool(self.slots["overflow"].any()),
            "wedged": bool(c["wedged"]),
        }

    def dissolve(self) -> None:
        """Let every participant run freely (the run is over, or a participant died)."""
        self.mem.store32(self.mode_off, DISSOLVED)
        for off in self.turn_off:
            self.mem.fetch_add32(off, 1)
            self.mem.futex_wake(off, -1)

    def start(self, first: int) -> None:
        self.mem.store32(self.seg.layout.offset("control", 0, "first"), first)
        self.mem.store32(self.token_off, first)
        self.mem.fetch_add32(self.turn_off[first], 1)
        self.mem.futex_wake(self.turn_off[first], 1)
