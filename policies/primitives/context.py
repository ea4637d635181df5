"""Self-tests of the machine's own checkers: context, interrupts, IPIs, double free, leaks, oopses.

Each mutant breaks one rule that a checker of the machine exists for, as the
kernel's debug options do: CONFIG_DEBUG_ATOMIC_SLEEP (a sleeping call inside
an RCU read-side section), CONFIG_DEBUG_PREEMPT and lockdep's irq tracking
(an unbalanced preempt_enable or local_irq_enable), the IPI code's
WARN_ON_ONCE(irqs_disabled()) in smp_call_function_many, the page
allocator's bad-page checks (a page freed twice), kmemleak (a page nobody
frees), KASAN's use-after-free (lib/test_kasan.c: kmalloc_uaf), the same
three for a kmem_cache, and an oops (an unchecked GFP_NOWAIT allocation,
which this scenario makes fail now and then).  The correct policy does the
same work correctly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.scenario import Arg, Needs, Operation, Policy, Region, Scenario, World, mutant
from shm import GFP_KERNEL, GFP_NOWAIT, alloc_site
from shm.checks import (
    CPU_CRASH,
    IPI_IRQS_OFF,
    IRQ_IMBALANCE,
    POOL_DOUBLE_FREE,
    POOL_LEAK,
    POOL_UAF,
    PREEMPT_IMBALANCE,
    SCHED_ALL_BLOCKED,
    SLAB_DOUBLE_FREE,
    SLAB_LEAK,
    SLAB_UAF,
    SLEEP_IN_ATOMIC,
)
from shm.slab import KmemCache

NSLOTS = 8
NOBJECTS = 32
OBJECT = np.dtype([("owner", "<i4"), ("value", "<i4")])
KEPT_SITE = alloc_site("context: kept object")
TEMP_SITE = alloc_site("context: temporary object")


def read_then_synchronize(w: World) -> None:
    w.rcu.read_lock(w.cpu)
    w.mem.load64(w.slot_off[0])
    w.rcu.read_unlock(w.cpu)
    w.rcu.synchronize(w.cpu)


def synchronize_inside_read_section(w: World) -> None:
    """DELIBERATELY BROKEN: synchronize_rcu() from inside rcu_read_lock().

    In the kernel this sleeps in atomic context and waits for itself.  Must
    trip context.sleep-in-atomic."""
    w.rcu.read_lock(w.cpu)
    w.mem.load64(w.slot_off[0])
    w.rcu.synchronize(w.cpu)
    w.rcu.read_unlock(w.cpu)


def free_once(w: World, ref: int) -> None:
    w.pool.free_page(w.cpu, ref, TEMP_SITE)


def free_twice(w: World, ref: int) -> None:
    """DELIBERATELY BROKEN: an error path frees the page its caller frees too.

    Must trip pool.double-free."""
    w.pool.free_page(w.cpu, ref, TEMP_SITE)
    w.cpu.window("error path:between-the-two-frees")
    w.pool.free_page(w.cpu, ref, TEMP_SITE)


def write_after_free(w: World, ref: int) -> None:
    """DELIBERATELY BROKEN: an error path frees the page, then writes its result into it.

    Must trip pool.uaf (lib/test_kasan.c: kmalloc_uaf)."""
    w.pool.free_page(w.cpu, ref, TEMP_SITE)
    w.pool.write(w.cpu, ref, 0, -1, "error path: writing the result")


def kmem_cache_free(w: World, obj: int) -> None:
    w.objects.free(w.cpu, obj)


def kmem_cache_free_twice(w: World, obj: int) -> None:
    """DELIBERATELY BROKEN: the replaced object is freed, and freed again on the way out.

    Must trip slab.double-free."""
    w.objects.free(w.cpu, obj)
    w.cpu.window("error path:between-the-two-frees")
    w.objects.free(w.cpu, obj)


def kmem_cache_forget(w: World, obj: int) -> None:
    """DELIBERATELY BROKEN: the replaced object is dropped without kmem_cache_free.

    Must trip slab.leak (the sweep finds an object no slot refers to)."""


def kmem_cache_free_then_read(w: World, obj: int) -> None:
    """DELIBERATELY BROKEN: the replaced object is freed, then read for a statistic.

    Must trip slab.uaf (lib/test_kasan.c: kmem_cache_oob / use after free)."""
    w.objects.free(w.cpu, obj)
    w.objects.load32(w.cpu, obj, "value", "statistic after free")


def replace_and_free_old(w: World, old: int) -> None:
    if old:
        w.pool.free_page(w.cpu, old, KEPT_SITE)


def replace_and_forget_old(w: World, old: int) -> None:
    """DELIBERATELY BROKEN: the replaced object is dropped without being freed.

    The leak sweep at the end finds the pages (pool.leak); a program that
    allocates more than the pool holds before it ends finds every CPU
    waiting for memory nobody will free first (sched.all-blocked)."""


def use_checked(w: World, ref: int | None) -> bool:
    if ref is None:
        w.count("nowait_failed")
        return False
    return True


def use_unchecked(w: World, ref: int | None) -> bool:
    """DELIBERATELY BROKEN: the result of a GFP_NOWAIT allocation is used without a NULL check.

    Must trip cpu.crash (the model's oops: an exception in policy code)."""
    w.pool.write(w.cpu, ref, 0, w.cpu.id)  # type: ignore[arg-type]
    return True


def preempt_and_irqs_off(w: World) -> None:
    cpu = w.cpu
    cpu.preempt_disable()
    cpu.local_irq_disable()
    w.mem.load64(w.slot_off[0])
    cpu.window("atomic section:irqs-off")
    cpu.local_irq_enable()
    cpu.preempt_enable()


def preempt_enable_twice(w: World) -> None:
    """DELIBERATELY BROKEN: an error path re-enables preemption, then the common exit again.

    Must trip context.preempt-imbalance (CONFIG_DEBUG_PREEMPT)."""
    preempt_and_irqs_off(w)
    w.cpu.preempt_enable()


def irq_enable_twice(w: World) -> None:
    """DELIBERATELY BROKEN: interrupts are enabled again where they already are.

    Must trip context.irq-imbalance (lockdep's irq-state tracking)."""
    preempt_and_irqs_off(w)
    w.cpu.local_irq_enable()


def _ipi_noop(target: int, arg: object) -> None:
    pass


def ipi_all(w: World) -> None:
    w.cpu.smp_call_function_many(range(w.ncpus), _ipi_noop)


def ipi_with_irqs_off(w: World) -> None:
    """DELIBERATELY BROKEN: smp_call_function_many() from a section with interrupts off.

    Two CPUs doing so wait for each other's acknowledgement forever; the
    kernel warns on entry.  Must trip context.ipi-irqs-off."""
    w.cpu.local_irq_disable()
    w.cpu.smp_call_function_many(range(w.ncpus), _ipi_noop)
    w.cpu.local_irq_enable()


@dataclass(frozen=True, kw_only=True)
class ContextPolicy(Policy):
    read_side: Callable[[World], None]
    free_temporary: Callable[[World, int], None]
    drop_replaced: Callable[[World, int], None]
    nowait_result: Callable[[World, int | None], bool] = use_checked
    atomic_section: Callable[[World], None] = preempt_and_irqs_off
    ipi: Callable[[World], None] = ipi_all
    drop_object: Callable[[World, int], None] = kmem_cache_free


class ContextScenario(Scenario):
    name = "context"
    doc = "the machine's own checkers: sleeping in atomic context, double free, leaks"
    needs = Needs(pool_pages=64, nowait_fail_rate=0.05)
    counters = ("nowait_failed",)

    def regions(self, ncpus: int) -> list[Region]:
        return [
            Region("slot", np.dtype("<i8"), NSLOTS),
            Region("object_slot", np.dtype("<i8"), NSLOTS),
            *KmemCache.regions("object", OBJECT, NOBJECTS),
        ]

    def attach(self, w: World) -> None:
        w.slot_off = [w.offset("slot", i) for i in range(NSLOTS)]
        w.object_off = [w.offset("object_slot", i) for i in range(NSLOTS)]
        w.objects = KmemCache(w.machine, w.seg_index, "object")

    def setup(self, w: World) -> None:
        w.objects.init()

    def operations(self, policy: ContextPolicy) -> tuple[Operation, ...]:
        read_side, free_temporary = policy.read_side, policy.free_temporary
        drop_replaced, nowait_result = policy.drop_replaced, policy.nowait_result

        def temporary(w: World) -> None:
            ref = w.pool.alloc_page(w.cpu, GFP_NOWAIT, TEMP_SITE)
            if not nowait_result(w, ref):
                return
            w.pool.write(w.cpu, ref, 0, w.cpu.id)  # type: ignore[arg-type]  # the mutant's unchecked NULL
            free_temporary(w, ref)  # type: ignore[arg-type]

        def keep(w: World, i: int) -> None:
            ref = w.pool.alloc_page(w.cpu, GFP_KERNEL, KEPT_SITE)
            if ref is None:
                return
            old = w.mem.xchg64(w.slot_off[i], ref)
            drop_replaced(w, old)

        def replace_object(w: World, i: int) -> None:
            obj = w.objects.alloc(w.cpu)
            if obj is None:
                return
            w.mem.store32(w.objects.off(obj, "owner"), w.cpu.id)
            old = w.mem.xchg64(w.object_off[i], obj)
            if old:
                policy.drop_object(w, old)

        return (
            Operation("read_side", 2, read_side),
            Operation("temporary", 4, temporary),
            Operation("keep", 4, keep, (Arg("slot", NSLOTS),)),
            Operation("replace_object", 3, replace_object, (Arg("slot", NSLOTS),)),
            Operation("atomic_section", 2, policy.atomic_section),
            Operation("ipi", 1, policy.ipi),
        )

    def sweep(self, w: World) -> None:
        held = {int(w.mem.load64(off)) & 0xFFFF for off in w.object_off if w.mem.load64(off)}
        stray = [int(s) for s in w.objects.allocated() if int(s) not in held]
        if stray:
            w.cpu.report(
                SLAB_LEAK, f"{len(stray)} {w.objects.name} object(s) allocated that no slot refers to", slots=stray[:16]
            )

    def teardown(self, w: World) -> None:
        for off in w.slot_off:
            ref = w.mem.xchg64(off, 0)
            if ref:
                w.pool.free_page(w.cpu, ref, KEPT_SITE)
        for off in w.object_off:
            obj = w.mem.xchg64(off, 0)
            if obj:
                w.objects.free(w.cpu, obj)


correct = ContextPolicy(
    "correct",
    doc="read sections closed before sleeping, each page freed once, replaced pages freed",
    read_side=read_then_synchronize,
    free_temporary=free_once,
    drop_replaced=replace_and_free_old,
)
ContextScenario.policies = (
    correct,
    # DELIBERATELY BROKEN below.
    mutant(
        correct,
        "sync_in_rcu",
        SLEEP_IN_ATOMIC,
        "Documentation/RCU/checklist.rst: no synchronize_rcu() in a read-side section",
        "synchronize_rcu inside rcu_read_lock",
        "op:read_side",
        read_side=synchronize_inside_read_section,
    ),
    mutant(
        correct,
        "double_free",
        POOL_DOUBLE_FREE,
        "mm/page_alloc.c: free_page_is_bad() (a page freed twice)",
        "a page freed twice",
        "op:temporary",
        free_temporary=free_twice,
    ),
    mutant(
        correct,
        "write_after_free",
        POOL_UAF,
        "lib/test_kasan.c: kmalloc_uaf (a write to freed memory)",
        "an error path writes a page after freeing it",
        "op:temporary",
        free_temporary=write_after_free,
    ),
    mutant(
        correct,
        "slab_double_free",
        SLAB_DOUBLE_FREE,
        "mm/slub.c: free_consistency_checks / set_freepointer double free detection",
        "a kmem_cache object freed twice",
        "op:replace_object",
        drop_object=kmem_cache_free_twice,
    ),
    mutant(
        correct,
        "slab_leak",
        SLAB_LEAK,
        "mm/kmemleak.c: a slab object that nothing references",
        "a replaced kmem_cache object is never freed",
        "op:replace_object",
        drop_object=kmem_cache_forget,
    ),
    mutant(
        correct,
        "slab_uaf",
        SLAB_UAF,
        "lib/test_kasan.c: kmem_cache use after free",
        "a kmem_cache object read after it was freed",
        "op:replace_object",
        drop_object=kmem_cache_free_then_read,
    ),
    mutant(
        correct,
        "leak",
        (POOL_LEAK, SCHED_ALL_BLOCKED),
        "mm/kmemleak.c: an allocated object that nothing references",
        "a replaced page is never freed",
        "op:keep",
        drop_replaced=replace_and_forget_old,
    ),
    mutant(
        correct,
        "unchecked_nowait",
        CPU_CRASH,
        "include/linux/gfp.h: a GFP_NOWAIT allocation may fail and must be checked",
        "a failed GFP_NOWAIT allocation is used",
        "nowait_failed",
        nowait_result=use_unchecked,
    ),
    mutant(
        correct,
        "preempt_enable_twice",
        PREEMPT_IMBALANCE,
        "include/linux/preempt.h: preempt_enable() pairs with one preempt_disable()",
        "an error path re-enables preemption twice",
        "op:atomic_section",
        atomic_section=preempt_enable_twice,
    ),
    mutant(
        correct,
        "irq_enable_twice",
        IRQ_IMBALANCE,
        "include/linux/irqflags.h: local_irq_enable() pairs with one local_irq_disable()",
        "interrupts enabled where they already are",
        "op:atomic_section",
        atomic_section=irq_enable_twice,
    ),
    mutant(
        correct,
        "ipi_irqs_off",
        IPI_IRQS_OFF,
        "kernel/smp.c smp_call_function_many_cond: WARN_ON_ONCE(... irqs_disabled() ...)",
        "an IPI sent with interrupts off",
        "op:ipi",
        ipi=ipi_with_irqs_off,
    ),
)
register(ContextScenario())
