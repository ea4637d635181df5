"""refcount_t and percpu_ref in shared memory.

refcount_t follows lib/refcount.c: an increment from zero ("addition on 0;
use-after-free") and a decrement below zero ("underflow; use-after-free") are
refcount findings, and the counter saturates so the object is leaked rather
than freed twice.

percpu_ref follows lib/percpu-refcount.c: per-CPU counts while live; kill
marks it dead and switches it to atomic mode, the per-CPU counts being folded
into the atomic count only after an RCU grace period (so every get/put that
saw per-CPU mode has finished), and then the initial reference is dropped.
Release runs when the atomic count reaches zero; ZONE_DEVICE's pgmap->ref is
the user this models (memunmap_pages: kill, then wait for the release).
"""

from __future__ import annotations

import numpy as np

from shm.checks import (
    PERCPU_REF_DOUBLE_KILL,
    PERCPU_REF_GET_AFTER_RELEASE,
    PERCPU_REF_REINIT_LIVE,
    PERCPU_REF_UNDERFLOW,
    REFCOUNT_INC_ON_ZERO,
    REFCOUNT_UNDERFLOW,
    Check,
)
from shm.events import EV, split_address
from shm.locks import Handle, wait_var_event, wake_up_var
from shm.protocols import CpuLike as Cpu
from shm.protocols import MachineLike as Machine
from shm.rcu import invoke_callback, rcu_callback

REFCOUNT = np.dtype([("refs", "<i4")])
REFCOUNT_SATURATED = -(1 << 30)

MAX_PERCPU = 64
PCREF_ATOMIC = 1
PCREF_DEAD = 2
PERCPU_COUNT_BIAS = 1 << 40
RELEASING, RELEASED = 1, 2

PERCPU_REF = np.dtype(
    [
        ("pcref_flags", "<i4"),
        ("pcref_released", "<i4"),
        ("pcref_release", "<i4"),
        ("pcref_pad", "<i4"),
        ("pcref_count", "<i8"),
        ("pcref_pad2", "<i8", (6,)),
        ("pcref_percpu", "<i8", (MAX_PERCPU,)),
    ]
)

_EV_REF = EV["refcount"]


class Refcount(Handle):
    """refcount_t at a 32-bit word (its own field, or a struct page's _refcount)."""

    __slots__ = ()

    def read(self) -> int:
        return self.mem.load32(self.off)

    def set(self, value: int) -> None:
        self.mem.store32(self.off, value)

    def _saturate(self, cpu: Cpu, check: Check, message: str, old: int) -> None:
        """Warn and saturate, so the object is leaked rather than freed twice; a counter that is
        already saturated was reported when it saturated, as the kernel warns once."""
        self.mem.store32(self.off, REFCOUNT_SATURATED)
        if old > REFCOUNT_SATURATED // 2:
            cpu.report(check, f"refcount_t: {message} ({self.name()})", object=self.name(), old=old)

    def inc(self, cpu: Cpu) -> None:
        """refcount_inc(): the caller already holds a reference, so the count cannot be 0."""
        self.add(cpu, 1)

    def add(self, cpu: Cpu, n: int) -> None:
        """refcount_add(): n more references; the caller holds one, so the count cannot be 0."""
        old = self.mem.fetch_add32(self.off, n)
        if old <= 0:
            self._saturate(cpu, REFCOUNT_INC_ON_ZERO, "addition on 0; use-after-free", old)

    def inc_not_zero(self, cpu: Cpu) -> bool:
        mem, off = self.mem, self.off
        old = mem.load32(off)
        while True:
            if old == 0:
                return False
            if old < 0:
                return True  # saturated: reported when it saturated
            seen = mem.cmpxchg32(off, old, old + 1)
            if seen == old:
                return True
            old = seen

    def dec_and_test(self, cpu: Cpu) -> bool:
        old = self.mem.fetch_sub32(self.off, 1)
        if old == 1:
            return True
        if old <= 0:
            self.underflowed(cpu, old)
        return False

    def sub_and_test(self, cpu: Cpu, n: int) -> bool:
        """refcount_sub_and_test(): drop n references; True if they were the last."""
        old = self.mem.fetch_sub32(self.off, n)
        if old == n:
            return True
        if old < n:
            self.underflowed(cpu, old)
        return False

    def underflowed(self, cpu: Cpu, old: int) -> None:
        """A decrement found `old` <= 0: reported, and the count saturated (what a caller that
        did the fetch_sub itself calls)."""
        self._saturate(cpu, REFCOUNT_UNDERFLOW, "underflow; use-after-free", old)


class PercpuRef(Handle):
    """struct percpu_ref: per-CPU counts while live, atomic after kill."""

    __slots__ = ()

    @classmethod
    def at(cls, machine: Machine, addr: int) -> PercpuRef:
        seg, off = split_address(addr)
        return cls(machine, seg, off)

    def _percpu(self, cpu_id: int) -> int:
        return self.off + 64 + 8 * cpu_id

    def init(self, cpu: Cpu, release) -> None:
        """percpu_ref_init(): live, per-CPU mode, one initial reference; release(cpu, addr) at zero."""
        mem, off = self.mem, self.off
        for i in range(MAX_PERCPU):
            mem.store64(self._percpu(i), 0)
        mem.store64(off + 16, 1 + PERCPU_COUNT_BIAS)
        mem.store32(off + 8, release if isinstance(release, int) else release.rcu_id)
        mem.store32(off + 4, 0)
        mem.store32(off, 0)

    def reinit(self, cpu: Cpu) -> None:
        """percpu_ref_reinit(): back to live per-CPU mode; only once it has been released."""
        if not self.released():
            cpu.report(
                PERCPU_REF_REINIT_LIVE, f"percpu_ref_reinit of {self.name()} before it was released", count=self.read()
            )
            return
        self.init(cpu, self.mem.load32(self.off + 8))

    def get(self, cpu: Cpu) -> None:
        rcu = cpu.machine.rcu
        rcu.read_lock(cpu)
        if self.mem.load32(self.off) & PCREF_ATOMIC:
            self._atomic_add(cpu, 1)
        else:
            self.mem.fetch_add64(self._percpu(cpu.id), 1)
        rcu.read_unlock(cpu)

    def tryget_live(self, cpu: Cpu) -> bool:
        rcu = cpu.machine.rcu
        rcu.read_lock(cpu)
        flags = self.mem.load32(self.off)
        ok = not flags & PCREF_DEAD
        if ok:
            if flags & PCREF_ATOMIC:
                self._atomic_add(cpu, 1)
            else:
                self.mem.fetch_add64(self._percpu(cpu.id), 1)
        rcu.read_unlock(cpu)
        return ok

    def put(self, cpu: Cpu) -> None:
        rcu = cpu.machine.rcu
        rcu.read_lock(cpu)
        if self.mem.load32(self.off) & PCREF_ATOMIC:
            self._atomic_add(cpu, -1)
        else:
            self.mem.fetch_sub64(self._percpu(cpu.id), 1)
        rcu.read_unlock(cpu)

    def _atomic_add(self, cpu: Cpu, delta: int) -> None:
        old = self.mem.fetch_add64(self.off + 16, delta)
        new = old + delta
        cpu.trace(_EV_REF, new & 0xFFFFFFFF)
        if new == 0:
            self._release(cpu)
        elif new < 0:
            cpu.report(
                PERCPU_REF_UNDERFLOW, f"percpu ref {self.name()} underflow (count {old} -> {new})", object=self.name()
            )
        elif delta > 0 and old == 0:
            cpu.report(
                PERCPU_REF_GET_AFTER_RELEASE,
                f"percpu ref {self.name()}: get after release (count {old} -> {new})",
                object=self.name(),
            )

    def _release(self, cpu: Cpu) -> None:
        """Run the release callback, then complete: a waiter must not see the ref released
        while the callback still runs (dev_pagemap_percpu_release calls complete() last)."""
        if self.mem.cmpxchg32(self.off + 4, 0, RELEASING):
            return  # a second release follows a get after release, which was reported
        invoke_callback(cpu, self.mem.load32(self.off + 8), self.addr)
        self.mem.store32(self.off + 4, RELEASED)
        wake_up_var(cpu, self.addr)

    def kill(self, cpu: Cpu) -> None:
        """percpu_ref_kill(): mark dead, switch to atomic mode, drop the initial reference."""
        if self.mem.fetch_or32(self.off, PCREF_DEAD) & PCREF_DEAD:
            cpu.report(
                PERCPU_REF_DOUBLE_KILL, f"percpu_ref_kill() called more than once on {self.name()}", object=self.name()
            )
            return
        self.switch_to_atomic(cpu)
        self.put(cpu)

    def switch_to_atomic(self, cpu: Cpu) -> None:
        """__percpu_ref_switch_to_atomic(): hold a ref until the RCU callback confirms."""
        if self.mem.fetch_or32(self.off, PCREF_ATOMIC) & PCREF_ATOMIC:
            return
        self._atomic_add(cpu, 1)
        cpu.machine.rcu.call(cpu, percpu_ref_switch_to_atomic_rcu, self.addr)

    def fold_percpu(self, cpu: Cpu) -> None:
        """Move the per-CPU counts and the bias into the atomic count."""
        total = 0
        for i in range(MAX_PERCPU):
            total += self.mem.xchg64(self._percpu(i), 0)
        self.mem.fetch_add64(self.off + 16, total - PERCPU_COUNT_BIAS)

    def wait_for_zero(self, cpu: Cpu) -> None:
        """Sleep until released (wait_for_completion(&pgmap->done) in memunmap_pages)."""
        wait_var_event(cpu, self.addr, self.released)

    def released(self) -> bool:
        return self.mem.load32(self.off + 4) == RELEASED

    def is_dead(self) -> bool:
        return bool(self.mem.load32(self.off) & PCREF_DEAD)

    def read(self) -> int:
        """The reference count as it would be in atomic mode."""
        count = self.mem.load64(self.off + 16)
        if self.mem.load32(self.off) & PCREF_ATOMIC and count < PERCPU_COUNT_BIAS // 2:
            return count
        return count - PERCPU_COUNT_BIAS + sum(self.mem.load64(self._percpu(i)) for i in range(MAX_PERCPU))


@rcu_callback("percpu_ref_switch_to_atomic_rcu")
def percpu_ref_switch_to_atomic_rcu(cpu: Cpu, addr: int) -> None:
    ref = PercpuRef.at(cpu.machine, addr)
    ref.fold_percpu(cpu)
    ref.put(cpu)
