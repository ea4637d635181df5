"""refcount_t torture: get/put on shared objects that are freed at zero.

Objects are pages of the pool; their refcount is the page's _refcount used
as a refcount_t.  Each slot publishes one object and holds one reference to
it.  Readers find the object under RCU and take a reference with
refcount_inc_not_zero (the object cannot be reused while they are inside the
read-side section because the last put frees it through call_rcu), use it,
and put it.  Writers replace a slot's object and drop the slot's reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.scenario import Arg, Needs, Operation, Policy, Region, Scenario, World, mutant
from shm import GFP_KERNEL, Cpu, Refcount, alloc_site, pfn_of, rcu_callback

NSLOTS = 4
OBJ_SITE = alloc_site("refcount: object")
MAGIC = 0x5EF0000


@dataclass(frozen=True)
class RefcountPolicy(Policy):
    refcount_inc_not_zero: Callable[[Refcount, Cpu], bool] | None = None
    refcount_dec_and_test: Callable[[Refcount, Cpu], bool] | None = None


def nonatomic_inc_not_zero(ref: Refcount, cpu: Cpu) -> bool:
    """DELIBERATELY BROKEN: the increment is a load and a store, not an atomic RMW.

    Two CPUs that increment together lose one increment; the count then
    reaches zero while a holder still uses the object.  Must produce a
    refcount (underflow) or use-after-free finding."""
    v = ref.mem.load32(ref.off)
    if v == 0:
        return False
    cpu.window("refcount_inc_not_zero:load-then-store")
    ref.mem.store32(ref.off, v + 1)
    return True


@rcu_callback("refcount: free object")
def free_object(cpu: Cpu, ref: int) -> None:
    cpu.machine.pool.free_page(cpu, ref, OBJ_SITE)


class RefcountScenario(Scenario):
    name = "refcount"
    doc = "refcount_t get/put on RCU-published objects freed at zero"
    needs = Needs(pool_pages=128)
    counters = ("got", "missed")

    def regions(self, ncpus: int) -> list[Region]:
        return [Region("slot", np.dtype([("obj", "<i8"), ("pad", "<i8", (7,))]), NSLOTS)]

    def attach(self, w: World) -> None:
        w.slot_off = [w.offset("slot", i, "obj") for i in range(NSLOTS)]

    def _new_object(self, w: World, slot: int) -> int:
        ref = w.pool.alloc_page(w.cpu, GFP_KERNEL, OBJ_SITE)
        if ref is None:
            return 0
        w.pool.write(w.cpu, ref, 0, MAGIC + slot)
        return ref

    def setup(self, w: World) -> None:
        for i in range(NSLOTS):
            w.mem.store64(w.slot_off[i], self._new_object(w, i))

    def operations(self, policy: RefcountPolicy) -> tuple[Operation, ...]:
        inc_not_zero, dec_and_test = policy.refcount_inc_not_zero, policy.refcount_dec_and_test

        def put(w: World, ref: int) -> None:
            if dec_and_test(w.pool.refcount(pfn_of(ref)), w.cpu):
                w.rcu.call(w.cpu, free_object, ref)

        def get_put(w: World, i: int) -> None:
            cpu, pool = w.cpu, w.pool
            w.rcu.read_lock(cpu)
            ref = w.mem.load64(w.slot_off[i])
            got = ref != 0 and inc_not_zero(pool.refcount(pfn_of(ref)), cpu)
            w.rcu.read_unlock(cpu)
            if not got:
                w.count("missed")
                return
            w.count("got")
            pool.read(cpu, ref, 0, "refcount: use of the object")
            cpu.window("get_put:holding-a-reference")
            pool.read(cpu, ref, 0, "refcount: use of the object")
            put(w, ref)

        def replace(w: World, i: int) -> None:
            new = self._new_object(w, i)
            if not new:
                return
            old = w.mem.xchg64(w.slot_off[i], new)
            if old:
                w.cpu.window("replace:before-dropping-the-slot-reference")
                put(w, old)

        slot = Arg("slot", NSLOTS)
        return (Operation("get_put", 10, get_put, (slot,)), Operation("replace", 2, replace, (slot,)))

    def sweep(self, w: World) -> None:
        for i in range(NSLOTS):
            ref = w.mem.load64(w.slot_off[i])
            if ref and w.pool.check(w.cpu, ref, "refcount sweep"):
                n = w.pool.refcount(pfn_of(ref)).read()
                if n != 1:
                    w.cpu.report("refcount", f"slot {i}: object refcount {n}, but one reference",
                                 **w.pool.describe(pfn_of(ref)))

    def teardown(self, w: World) -> None:
        for i in range(NSLOTS):
            ref = w.mem.xchg64(w.slot_off[i], 0)
            if ref and w.pool.check(w.cpu, ref, "refcount teardown"):
                if w.pool.refcount(pfn_of(ref)).dec_and_test(w.cpu):
                    w.rcu.call(w.cpu, free_object, ref)


refcount_t = RefcountPolicy(
    "refcount_t",
    doc="lib/refcount.c semantics: atomic inc_not_zero, dec_and_test, saturation",
    refcount_inc_not_zero=Refcount.inc_not_zero,
    refcount_dec_and_test=Refcount.dec_and_test,
)
RefcountScenario.policies = (
    refcount_t,
    # DELIBERATELY BROKEN below.
    mutant(refcount_t, "nonatomic_inc", ("refcount", "use-after-free"),
           "lib/refcount.c: refcount_inc_not_zero must be one atomic cmpxchg",
           "refcount_inc_not_zero as a plain load and store",
           refcount_inc_not_zero=nonatomic_inc_not_zero),
)
register(RefcountScenario())
