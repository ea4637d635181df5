"""The watchdog: a hang becomes a finding, never a CI timeout.

Two detectors, run from the runner's loop:
- a wait-for graph built from what each CPU says it waits on and who owns
  that lock: a cycle that persists across checks is a deadlock, found as it
  forms (ABBA, AA, a grace period waiting on a reader that waits on the
  updater): lock.deadlock-cycle;
- per-CPU heartbeats: a running CPU whose operation count has not moved for
  `stall_timeout` seconds is stuck (a lost wakeup, a livelock, a spin on a
  lock nobody will release): watchdog.stall, the hung-task detector.
Both name the CPU, its operation, what it waits on, and the locks every CPU
holds.

Under the controlled scheduler only one CPU runs at a time: the scheduler
itself finds deadlocks (every CPU blocked), and a stall is measured on the
schedule's progress and blamed on the CPU holding the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shm import Machine
from shm.checks import LOCK_DEADLOCK_CYCLE, WATCHDOG_STALL, Check
from shm.cpu import irqs_off
from shm.events import split_address
from shm.locks import (
    ADDR_MASK,
    RWSEM_LOCKED,
    WAIT_GP,
    WAIT_IPI,
    WAIT_MUTEX,
    WAIT_NAMES,
    WAIT_PAGE,
    WAIT_READ,
    WAIT_SHIFT,
    WAIT_SPIN,
    WAIT_WRITE,
    lock_sites,
)

CYCLE_CHECKS = 3


class Watchdog:
    def __init__(
        self,
        machine: Machine,
        stall_timeout: float,
        op_names: list[str],
        progress: Callable[[], tuple[int, int]] | None = None,
    ):
        """`progress`, for a controlled run: (decisions so far, CPU holding the token)."""
        self.machine = machine
        self.progress = progress
        self.last_progress = (-1, time.monotonic())
        self.stall_timeout = stall_timeout
        self.op_names = op_names
        self.sites = lock_sites(machine)
        now = time.monotonic()
        self.last_beat = {i: (-1, now) for i in range(machine.ncpus)}
        self.cycle_seen: tuple | None = None
        self.cycle_count = 0
        self.fired = False

    # -- state -----------------------------------------------------------
    def _word(self, addr: int, delta: int = 0) -> int:
        seg, off = split_address(addr)
        return self.machine.mems[seg].load32(off + delta)

    def owners_of(self, wait: int) -> list[int]:
        what, addr = wait >> WAIT_SHIFT, wait & ADDR_MASK
        if what in (WAIT_SPIN, WAIT_MUTEX):
            return [self._word(addr) - 1] if self._word(addr) else []
        if what in (WAIT_READ, WAIT_WRITE):
            count = self._word(addr)
            writer = self._word(addr, 4) - 1
            out = [writer] if count & RWSEM_LOCKED and writer >= 0 else []
            if what == WAIT_WRITE:
                seg, off = split_address(addr)
                mask = self.machine.mems[seg].load64(off + 8)
                out += [i for i in range(64) if mask >> i & 1]
            return out
        if what in (WAIT_GP, WAIT_IPI) and addr < self.machine.nslots:
            return [addr]
        return []

    def waits(self) -> dict[int, int]:
        m = self.machine
        return {i: int(w) for i, w in enumerate(m.cpus["waiting_on"]) if w and i < m.nslots}

    def describe_wait(self, wait: int) -> str:
        what, addr = wait >> WAIT_SHIFT, wait & ADDR_MASK
        if what == WAIT_GP:
            return f"a grace period (reader cpu {addr})" if addr < self.machine.nslots else "an SRCU grace period"
        if what == WAIT_IPI:
            return f"an IPI acknowledgement from cpu {addr} (its irqs are disabled)"
        if what == WAIT_PAGE:
            pool = self.machine.pool
            owners = sorted(pool.owners().items(), key=lambda kv: -kv[1])[:4]
            return (
                f"a free page ({pool.npages - pool.nr_free()} of {pool.npages} allocated: "
                + ", ".join(f"{n} x {site}" for site, n in owners)
                + ")"
            )
        return f"{WAIT_NAMES.get(what, what)} {self.machine.describe(addr)}"

    def describe_cpu(self, i: int) -> str:
        """One line for a CPU: what it runs, what it waits for, its interrupts (for messages)."""
        st = self.cpu_state(i)
        who = "the grace-period kthread" if i == self.machine.gp_cpu else f"cpu {i}"
        parts = [who + (f" in {st['op']}" if st["op"] else "")]
        if st["waiting_on"]:
            parts.append(f"waiting for {st['waiting_on']}")
        if st["irqs_disabled"]:
            parts.append("interrupts off")
        parts.append(f"{st['ops_done']} operations done")
        return ", ".join(parts)

    def held_locks(self) -> dict[str, list[str]]:
        """Every lock held, by CPU (what the lock words say)."""
        out: dict[str, list[str]] = {}
        m = self.machine
        for kind, seg, off in self.sites:
            mem = m.mems[seg]
            if kind in ("spinlock", "mutex"):
                owner = mem.load32(off) - 1
                if owner >= 0:
                    out.setdefault(f"cpu{owner}", []).append(f"{kind} {m.describe((seg << 33) | off)}")
            else:
                name = m.describe((seg << 33) | off)
                writer = mem.load32(off + 4) - 1
                if writer >= 0:
                    out.setdefault(f"cpu{writer}", []).append(f"rwsem(write) {name}")
                mask = mem.load64(off + 8)
                for i in range(64):
                    if mask >> i & 1:
                        out.setdefault(f"cpu{i}", []).append(f"rwsem(read) {name}")
        return out

    def cpu_state(self, i: int) -> dict:
        c = self.machine.cpus[i]
        op = int(c["op"]) if i < self.machine.ncpus else -1
        return {
            "cpu": i,
            "op": self.op_names[op] if 0 <= op < len(self.op_names) else None,
            "waiting_on": self.describe_wait(int(c["waiting_on"])) if c["waiting_on"] else None,
            "irqs_disabled": irqs_off(int(c["irqs_disabled"])),
            "ops_done": int(c["heartbeat"]),
        }

    # -- detectors -------------------------------------------------------
    def find_cycle(self) -> list[tuple[int, int]] | None:
        waits = self.waits()
        for start in waits:
            path: list[tuple[int, int]] = []
            seen = set()
            cur = start
            while cur in waits and cur not in seen:
                seen.add(cur)
                owners = [o for o in self.owners_of(waits[cur]) if o != cur or len(path) == 0]
                path.append((cur, waits[cur]))
                nxt = next((o for o in owners if o in waits), None)
                if nxt is None:
                    if cur in owners:  # waiting on itself (AA)
                        return path
                    break
                if nxt == start:
                    return path
                cur = nxt
        return None

    def check(self, now: float | None = None) -> bool:
        """Record a deadlock finding if one is seen; True if it fired."""
        if self.fired:
            return False
        now = time.monotonic() if now is None else now
        if self.progress is not None:
            return self._check_controlled(now)
        cycle = self.find_cycle()
        if cycle:
            key = tuple(cycle)
            if key == self.cycle_seen:
                self.cycle_count += 1
            else:
                self.cycle_seen, self.cycle_count = key, 1
            if self.cycle_count >= CYCLE_CHECKS:
                chain = "; ".join(
                    f"cpu {c} waits for {self.describe_wait(w)} held by cpu "
                    f"{','.join(str(o) for o in self.owners_of(w))}"
                    for c, w in cycle
                )
                self.fire(LOCK_DEADLOCK_CYCLE, cycle[0][0], f"deadlock: {chain}", [c for c, _ in cycle])
                return True
        else:
            self.cycle_seen, self.cycle_count = None, 0
        cpus = self.machine.cpus
        for i in range(self.machine.ncpus):
            beat = int(cpus["heartbeat"][i])
            last, since = self.last_beat[i]
            if beat != last or int(cpus["status"][i]) != 1:
                self.last_beat[i] = (beat, now)
                continue
            if now - since > self.stall_timeout:
                st = self.cpu_state(i)
                self.fire(
                    WATCHDOG_STALL,
                    i,
                    f"cpu {i} made no progress for {now - since:.1f}s in {st['op']}"
                    + (f", waiting for {st['waiting_on']}" if st["waiting_on"] else ", waiting for nothing it named"),
                    [i],
                )
                return True
        return False

    def _check_controlled(self, now: float) -> bool:
        assert self.progress is not None
        step, holder = self.progress()
        last, since = self.last_progress
        if step != last:
            self.last_progress = (step, now)
            return False
        if now - since <= self.stall_timeout or not 0 <= holder < self.machine.nslots:
            return False
        st = self.cpu_state(holder) if holder < self.machine.ncpus else {"op": None, "waiting_on": None}
        who = f"cpu {holder}" if holder < self.machine.ncpus else "the grace-period kthread"
        self.fire(
            WATCHDOG_STALL,
            holder,
            f"{who} ran for {now - since:.1f}s without reaching a scheduling point, in {st['op']}",
            [holder] if holder < self.machine.ncpus else [],
        )
        return True

    def fire(self, check: Check, cpu: int, message: str, cpus: list[int]) -> None:
        """Record the finding with every named CPU's state and every lock held."""
        self.fired = True
        op = int(self.machine.cpus["op"][cpu])
        objects = {
            "cpus": [self.describe_cpu(i) for i in cpus],
            "locks_held": self.held_locks(),
        }
        ring = self.machine.traces[cpu].copy()
        self.machine.record_finding(check, cpu, op, int(self.machine.cpus["heartbeat"][cpu]), message, objects, ring)
