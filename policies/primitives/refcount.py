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
from shm.checks import POOL_UAF, REFCOUNT_INC_ON_ZERO, REFCOUNT_UNDERFLOW, define_check

NSLOTS = 4
OBJ_SITE = alloc_site("refcount: object")
MAGIC = 0x5EF0000

OBJECT_COUNT = define_check(
    "refcount.object-count",
    "refcount",
    "quiescent: an object's refcount is not the number of references to it (one, its slot's)",
)


def put_nothing(w: World, ref: int) -> None:
    """A get that failed holds nothing, so it puts nothing."""


def put_on_error(w: World, ref: int, put: Callable[[World, int], None]) -> None:
    put(w, ref)


def return_without_put(w: World, ref: int, put: Callable[[World, int], None]) -> None:
    """DELIBERATELY BROKEN: the error path returns with the reference still held.

    The object is never freed; the sweep finds its count above its one
    reference (refcount.object-count)."""


@dataclass(frozen=True, kw_only=True)
class RefcountPolicy(Policy):
    refcount_inc_not_zero: Callable[[Refcount, Cpu], bool]
    refcount_dec_and_test: Callable[[Refcount, Cpu], bool]
    after_failed_get: Callable[[World, int], None] = put_nothing
    error_exit: Callable[[World, int, Callable[[World, int], None]], None] = put_on_error


def nonatomic_inc_not_zero(ref: Refcount, cpu: Cpu) -> bool:
    """DELIBERATELY BROKEN: the increment is a load and a store, not an atomic RMW.

    Two CPUs that increment together lose one increment; the count then
    reaches zero while a holder still uses the object, which is freed under
    it.  The bug shows at the holder's next use of the object (pool.uaf) or
    at its put (refcount.underflow), whichever comes first."""
    v = ref.mem.load32(ref.off)
    if v == 0:
        return False
    cpu.window("refcount_inc_not_zero:load-then-store")
    ref.mem.store32(ref.off, v + 1)
    return True


def inc_where_inc_not_zero_is_needed(ref: Refcount, cpu: Cpu) -> bool:
    """DELIBERATELY BROKEN: refcount_inc() on an object found under RCU.

    The object may be on its way to being freed (its count reached 0 and
    its free waits for a grace period); only refcount_inc_not_zero() may
    take a reference then (the pte_ref document's pte_get vs
    pte_get_unless_zero).  Must trip refcount.inc-on-zero."""
    ref.inc(cpu)
    return True


def put_after_failed_get(w: World, ref: int) -> None:
    """DELIBERATELY BROKEN: the error path of a failed get drops a reference it never took.

    Must trip refcount.underflow (the count of a dying object is 0)."""
    w.policy.refcount_dec_and_test(w.pool.refcount(pfn_of(ref)), w.cpu)


@rcu_callback("refcount: free object")
def free_object(cpu: Cpu, ref: int) -> None:
    cpu.machine.pool.free_page(cpu, ref, OBJ_SITE)


class RefcountScenario(Scenario):
    name = "refcount"
    doc = "refcount_t get/put on RCU-published objects freed at zero"
    needs = Needs(pool_pages=128)
    counters = ("got", "missed", "shared", "error_exits")

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

        def get_put(w: World, i: int, use: int) -> None:
            cpu, pool = w.cpu, w.pool
            w.rcu.read_lock(cpu)
            ref = w.mem.load64(w.slot_off[i])
            cpu.window("get_put:found-before-inc_not_zero")
            got = ref != 0 and inc_not_zero(pool.refcount(pfn_of(ref)), cpu)
            if not got and ref:
                policy.after_failed_get(w, ref)
            w.rcu.read_unlock(cpu)
            if not got:
                w.count("missed")
                return
            w.count("got")
            if pool.refcount(pfn_of(ref)).read() > 2:
                w.count("shared")
            if use == 0:
                w.count("error_exits")
                policy.error_exit(w, ref, put)
                return
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
        return (Operation("get_put", 10, get_put, (slot, Arg("use", 4))), Operation("replace", 2, replace, (slot,)))

    def sweep(self, w: World) -> None:
        """Every object alive is in a slot with refcount 1; one in no slot was leaked by a
        reference never put (it must have been freed when its slot let go)."""
        pool = w.pool
        w.rcu.barrier(w.cpu)
        in_slots = {}
        for i in range(NSLOTS):
            ref = w.mem.load64(w.slot_off[i])
            if ref and pool.check(w.cpu, ref, "refcount sweep"):
                in_slots[pfn_of(ref)] = i
        for pfn in pool.allocated():
            pfn = int(pfn)
            if int(pool.pages["owner"][pfn]) != OBJ_SITE:
                continue
            n = pool.refcount(pfn).read()
            if pfn in in_slots and n != 1:
                w.cpu.report(
                    OBJECT_COUNT, f"slot {in_slots[pfn]}: object refcount {n}, but one reference", **pool.describe(pfn)
                )
                return
            if pfn not in in_slots:
                w.cpu.report(
                    OBJECT_COUNT,
                    f"object page {pfn} is in no slot but has refcount {n}: a reference was never put",
                    **pool.describe(pfn),
                )
                return

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
    mutant(
        refcount_t,
        "nonatomic_inc",
        (REFCOUNT_UNDERFLOW, POOL_UAF),
        "lib/refcount.c: refcount_inc_not_zero must be one atomic cmpxchg",
        "refcount_inc_not_zero as a plain load and store",
        "shared",
        refcount_inc_not_zero=nonatomic_inc_not_zero,
    ),
    mutant(
        refcount_t,
        "inc_not_unless_zero",
        REFCOUNT_INC_ON_ZERO,
        "pte_ref document (Qi Zheng, 2021-11-10): pte_get vs pte_get_unless_zero",
        "refcount_inc on an object found under RCU",
        "missed",
        refcount_inc_not_zero=inc_where_inc_not_zero_is_needed,
    ),
    mutant(
        refcount_t,
        "leak_on_error",
        OBJECT_COUNT,
        "lib/refcount.c: every refcount_inc_not_zero that succeeds is paired with a put",
        "an error path returns with the reference held",
        "error_exits",
        error_exit=return_without_put,
    ),
    mutant(
        refcount_t,
        "put_after_failed_get",
        REFCOUNT_UNDERFLOW,
        "lib/refcount.c: refcount_dec_and_test underflow (a put without its get)",
        "a failed refcount_inc_not_zero is followed by a put",
        "missed",
        after_failed_get=put_after_failed_get,
    ),
)
register(RefcountScenario())
