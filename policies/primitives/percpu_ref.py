"""percpu_ref torture: per-CPU gets and puts racing with kill, wait for zero and reinit.

Each slot is a percpu_ref guarding an object (a pool page), like pgmap->ref
guarding a device's pages: holders take the ref with percpu_ref_tryget_live
and use the object; a killer kills the ref, waits for the release (which
frees the object, like memunmap_pages waiting for pgmap->done), then installs
a new object and reinitialises the ref.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.scenario import Arg, Needs, Operation, Policy, Region, Scenario, World, mutant
from shm import GFP_KERNEL, MUTEX, PERCPU_REF, Cpu, PercpuRef, alloc_site, rcu_callback
from shm.checks import (
    PERCPU_REF_DOUBLE_KILL,
    PERCPU_REF_GET_AFTER_RELEASE,
    PERCPU_REF_REINIT_LIVE,
    PERCPU_REF_UNDERFLOW,
    SCHED_ALL_BLOCKED,
    WATCHDOG_STALL,
    define_check,
)
from shm.layout import field_offsets
from shm.locks import wait_var_event
from shm.refcount import PCREF_ATOMIC, PCREF_DEAD, PERCPU_COUNT_BIAS

NSLOTS = 2
OBJ_SITE = alloc_site("percpu_ref: guarded object")
SLOT = np.dtype([("ref", PERCPU_REF), ("obj", "<i8"), ("kill_lock", MUTEX)], align=True)
OBJ_DELTA = field_offsets(SLOT)["obj"] - field_offsets(SLOT)["ref"]

HOLDER_SAW_RELEASE = define_check(
    "percpu_ref.holder-saw-release",
    "use-after-free",
    "a CPU holding a reference finds the guarded object already released",
)


@rcu_callback("percpu_ref: release frees the object")
def release_object(cpu: Cpu, addr: int) -> None:
    ref = PercpuRef.at(cpu.machine, addr)
    obj = ref.mem.xchg64(ref.off + OBJ_DELTA, 0)
    if obj:
        cpu.machine.pool.free_page(cpu, obj, OBJ_SITE)


def kill_without_atomic_switch(ref: PercpuRef, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: kill drops the bias and the initial ref without the switch.

    The per-CPU counts are never folded in and no grace period separates
    the per-CPU gets from the atomic count, so the count reaches zero and the
    object is released while holders still use it: a holder's next use
    finds the object released (percpu_ref.holder-saw-release), or its put
    takes the count below zero (percpu_ref.underflow), whichever comes first."""
    ref.mem.fetch_or32(ref.off, PCREF_DEAD | PCREF_ATOMIC)
    ref.mem.fetch_add64(ref.off + 16, -PERCPU_COUNT_BIAS)
    ref.put(cpu)


def tryget_live(ref: PercpuRef, cpu: Cpu) -> bool:
    return ref.tryget_live(cpu)


def get_without_tryget(ref: PercpuRef, cpu: Cpu) -> bool:
    """DELIBERATELY BROKEN: percpu_ref_get() where percpu_ref_tryget_live() is needed.

    A holder that finds the ref killed must not take it (get_dev_pagemap
    uses percpu_ref_tryget_live(&pgmap->ref)); getting it anyway after the
    release revives a dead count.  Must trip percpu_ref.get-after-release."""
    ref.get(cpu)
    return True


def wait_for_release(ref: PercpuRef, cpu: Cpu) -> None:
    ref.wait_for_zero(cpu)


def reinit_without_waiting(ref: PercpuRef, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: the killer does not wait for the release before reinit.

    Must trip percpu_ref.reinit-unreleased."""


def wait_with_lost_wakeup(ref: PercpuRef, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: tests the condition, then starts waiting: a wakeup in between is lost.

    The classic lost wakeup (Documentation/memory-barriers.txt, "SLEEP AND
    WAKE-UP FUNCTIONS": set the task state before testing the condition).
    The release's wake_up_var() lands between the test and the sleep, and
    the killer sleeps forever: every CPU blocked (sched.all-blocked), or
    free-running, no progress (watchdog.stall)."""
    machine = cpu.machine
    if ref.released():
        return
    cpu.window("wait_for_release:after-the-test")
    bucket = machine.wake_bucket(ref.addr)
    seq = machine.mem.load32(bucket)
    wait_var_event(cpu, ref.addr, lambda: machine.mem.load32(bucket) != seq)


def put_on_error(ref: PercpuRef, cpu: Cpu) -> None:
    ref.put(cpu)


def return_holding_the_ref(ref: PercpuRef, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: an error path returns without percpu_ref_put().

    The count never drops to zero after a kill, so the killer waits for a
    release that never comes, as memunmap_pages would hang: every CPU ends
    up blocked (sched.all-blocked), or free-running, or at teardown, the
    watchdog sees the wait make no progress (watchdog.stall)."""


@dataclass(frozen=True, kw_only=True)
class PercpuRefPolicy(Policy):
    percpu_ref_kill: Callable[[PercpuRef, Cpu], None]
    tryget: Callable[[PercpuRef, Cpu], bool] = tryget_live
    wait_for_zero: Callable[[PercpuRef, Cpu], None] = wait_for_release
    kill_lock: bool = True
    error_exit: Callable[[PercpuRef, Cpu], None] = put_on_error


class PercpuRefScenario(Scenario):
    name = "percpu_ref"
    doc = "percpu_ref get/put across CPUs against kill, wait for zero, reinit"
    needs = Needs(pool_pages=64)
    counters = ("got", "tryget_failed", "kills", "kill_busy", "release_waits", "error_exits")

    def regions(self, ncpus: int) -> list[Region]:
        return [Region("slot", SLOT, NSLOTS)]

    def attach(self, w: World) -> None:
        w.refs = [w.percpu_ref("slot", i, "ref") for i in range(NSLOTS)]
        w.obj_off = [w.offset("slot", i, "obj") for i in range(NSLOTS)]
        w.kill_locks = [w.mutex("slot", i, "kill_lock") for i in range(NSLOTS)]

    def _install(self, w: World, i: int) -> None:
        obj = w.pool.alloc_page(w.cpu, GFP_KERNEL, OBJ_SITE)
        if obj is not None:
            w.pool.write(w.cpu, obj, 0, i)
        w.mem.store64(w.obj_off[i], obj or 0)

    def setup(self, w: World) -> None:
        for i in range(NSLOTS):
            self._install(w, i)
            w.refs[i].init(w.cpu, release_object)

    def operations(self, policy: PercpuRefPolicy) -> tuple[Operation, ...]:
        kill, tryget, wait_for_zero = policy.percpu_ref_kill, policy.tryget, policy.wait_for_zero
        serialised = policy.kill_lock

        def get_put(w: World, i: int, use: int) -> None:
            """A holder uses the object while it holds the ref; before each use it checks the
            object is still the one it found (the release clears it before freeing it)."""
            cpu = w.cpu
            ref = w.refs[i]
            if not tryget(ref, cpu):
                w.count("tryget_failed")
                return
            w.count("got")
            if use == 0:
                w.count("error_exits")
                policy.error_exit(ref, cpu)
                return
            obj = w.mem.load64(w.obj_off[i])
            for _ in range(2):
                if not obj or w.mem.load64(w.obj_off[i]) != obj:
                    cpu.report(
                        HOLDER_SAW_RELEASE,
                        f"percpu_ref holder of slot {i}: the object it holds a reference to was released",
                        slot=i,
                    )
                    break
                w.pool.read(cpu, obj, 0, "percpu_ref holder: use of the object")
                cpu.window("holder:using-the-object")
            ref.put(cpu)

        def kill_reinit(w: World, i: int) -> None:
            cpu = w.cpu
            if serialised and not w.kill_locks[i].trylock(cpu):
                w.count("kill_busy")
                return
            ref = w.refs[i]
            kill(ref, cpu)
            if not ref.released():
                w.count("release_waits")
            wait_for_zero(ref, cpu)
            w.count("kills")
            if ref.released():
                self._install(w, i)
            ref.reinit(cpu)
            if serialised:
                w.kill_locks[i].unlock(cpu)

        slot = Arg("slot", NSLOTS)
        return (
            Operation("get_put", 12, get_put, (slot, Arg("use", 4))),
            Operation("kill_reinit", 1, kill_reinit, (slot,)),
        )

    def teardown(self, w: World) -> None:
        for ref in w.refs:
            if ref.mem.load32(ref.off) & PCREF_DEAD:
                continue
            ref.kill(w.cpu)
            ref.wait_for_zero(w.cpu)


percpu_ref = PercpuRefPolicy(
    "percpu_ref",
    doc="lib/percpu-refcount.c: kill switches to atomic mode after a grace period",
    percpu_ref_kill=PercpuRef.kill,
)
PercpuRefScenario.policies = (
    percpu_ref,
    # DELIBERATELY BROKEN below.
    mutant(
        percpu_ref,
        "kill_no_atomic",
        (HOLDER_SAW_RELEASE, PERCPU_REF_UNDERFLOW),
        "lib/percpu-refcount.c: percpu_ref_kill_and_confirm must __percpu_ref_switch_to_atomic",
        "kill without the switch to atomic mode",
        "tryget_failed",
        percpu_ref_kill=kill_without_atomic_switch,
    ),
    mutant(
        percpu_ref,
        "get_after_kill",
        PERCPU_REF_GET_AFTER_RELEASE,
        "mm/memremap.c get_dev_pagemap: percpu_ref_tryget_live(&pgmap->ref)",
        "percpu_ref_get where percpu_ref_tryget_live is needed",
        "tryget_failed",
        tryget=get_without_tryget,
    ),
    mutant(
        percpu_ref,
        "double_kill",
        PERCPU_REF_DOUBLE_KILL,
        "lib/percpu-refcount.c percpu_ref_kill_and_confirm: 'called more than once'",
        "two killers of one ref, not serialised",
        "kill_busy",
        kill_lock=False,
    ),
    mutant(
        percpu_ref,
        "reinit_unreleased",
        PERCPU_REF_REINIT_LIVE,
        "lib/percpu-refcount.c percpu_ref_reinit: 'percpu_ref_is_zero(ref)' must hold",
        "reinit without waiting for the release",
        "release_waits",
        wait_for_zero=reinit_without_waiting,
    ),
    mutant(
        percpu_ref,
        "leak_on_error",
        (SCHED_ALL_BLOCKED, WATCHDOG_STALL),
        "lib/percpu-refcount.c: every percpu_ref_tryget_live that succeeds is paired with a put",
        "an error path returns holding the ref",
        "error_exits",
        error_exit=return_holding_the_ref,
    ),
    mutant(
        percpu_ref,
        "lost_wakeup",
        (SCHED_ALL_BLOCKED, WATCHDOG_STALL),
        "Documentation/memory-barriers.txt: SLEEP AND WAKE-UP FUNCTIONS",
        "the killer tests for the release, then sleeps: the wakeup in between is lost",
        "release_waits",
        wait_for_zero=wait_with_lost_wakeup,
    ),
)
register(PercpuRefScenario())
