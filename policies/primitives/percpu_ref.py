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
from shm.refcount import PCREF_ATOMIC, PCREF_DEAD, PERCPU_COUNT_BIAS

NSLOTS = 2
OBJ_SITE = alloc_site("percpu_ref: guarded object")
SLOT = np.dtype([("ref", PERCPU_REF), ("obj", "<i8"), ("kill_lock", MUTEX)], align=True)
OBJ_DELTA = SLOT.fields["obj"][1] - SLOT.fields["ref"][1]


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
    object is released while holders still use it.  Must produce a
    use-after-free (or refcount) finding."""
    ref.mem.fetch_or32(ref.off, PCREF_DEAD | PCREF_ATOMIC)
    ref.mem.fetch_add64(ref.off + 16, -PERCPU_COUNT_BIAS)
    ref.put(cpu)


@dataclass(frozen=True)
class PercpuRefPolicy(Policy):
    percpu_ref_kill: Callable[[PercpuRef, Cpu], None] | None = None


class PercpuRefScenario(Scenario):
    name = "percpu_ref"
    doc = "percpu_ref get/put across CPUs against kill, wait for zero, reinit"
    needs = Needs(pool_pages=64)
    counters = ("got", "tryget_failed", "kills")

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
        kill = policy.percpu_ref_kill

        def get_put(w: World, i: int) -> None:
            cpu = w.cpu
            ref = w.refs[i]
            if not ref.tryget_live(cpu):
                w.count("tryget_failed")
                return
            w.count("got")
            obj = w.mem.load64(w.obj_off[i])
            if obj:
                w.pool.read(cpu, obj, 0, "percpu_ref holder: use of the object")
                cpu.window("holder:using-the-object")
                w.pool.read(cpu, obj, 0, "percpu_ref holder: use of the object")
            else:
                cpu.report("use-after-free", f"percpu_ref holder of slot {i}: object already released")
            ref.put(cpu)

        def kill_reinit(w: World, i: int) -> None:
            cpu = w.cpu
            if not w.kill_locks[i].trylock(cpu):
                return
            ref = w.refs[i]
            kill(ref, cpu)
            ref.wait_for_zero(cpu)
            w.count("kills")
            self._install(w, i)
            ref.reinit(cpu)
            w.kill_locks[i].unlock(cpu)

        slot = Arg("slot", NSLOTS)
        return (Operation("get_put", 12, get_put, (slot,)), Operation("kill_reinit", 1, kill_reinit, (slot,)))

    def sweep(self, w: World) -> None:
        for i, ref in enumerate(w.refs):
            n = ref.read()
            if n != 1:
                w.cpu.report("refcount", f"percpu_ref of slot {i} counts {n} at the end, expected 1")

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
    mutant(percpu_ref, "kill_no_atomic", ("use-after-free", "refcount"),
           "lib/percpu-refcount.c: percpu_ref_kill_and_confirm must __percpu_ref_switch_to_atomic",
           "kill without the switch to atomic mode", percpu_ref_kill=kill_without_atomic_switch),
)
register(PercpuRefScenario())
