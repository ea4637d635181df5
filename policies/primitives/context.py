"""Self-tests of the machine's own checkers: context, double free, leaks.

Each mutant breaks one rule that a checker of the machine exists for, as the
kernel's debug options do: CONFIG_DEBUG_ATOMIC_SLEEP (a sleeping call inside
an RCU read-side section), the page allocator's bad-page checks (a page
freed twice), kmemleak (a page nobody frees).  The correct policy does the
same work correctly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.scenario import Arg, Needs, Operation, Policy, Region, Scenario, World, mutant
from shm import GFP_KERNEL, GFP_NOWAIT, alloc_site

NSLOTS = 8
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
    produce an invalid-context finding."""
    w.rcu.read_lock(w.cpu)
    w.mem.load64(w.slot_off[0])
    w.rcu.synchronize(w.cpu)
    w.rcu.read_unlock(w.cpu)


def free_once(w: World, ref: int) -> None:
    w.pool.free_page(w.cpu, ref, TEMP_SITE)


def free_twice(w: World, ref: int) -> None:
    """DELIBERATELY BROKEN: an error path frees the page its caller frees too.

    Must produce a double-free finding."""
    w.pool.free_page(w.cpu, ref, TEMP_SITE)
    w.cpu.window("error path:between-the-two-frees")
    w.pool.free_page(w.cpu, ref, TEMP_SITE)


def replace_and_free_old(w: World, old: int) -> None:
    if old:
        w.pool.free_page(w.cpu, old, KEPT_SITE)


def replace_and_forget_old(w: World, old: int) -> None:
    """DELIBERATELY BROKEN: the replaced object is dropped without being freed.

    Must produce a leak finding (at teardown, or when the pool runs dry)."""


@dataclass(frozen=True)
class ContextPolicy(Policy):
    read_side: Callable[[World], None] | None = None
    free_temporary: Callable[[World, int], None] | None = None
    drop_replaced: Callable[[World, int], None] | None = None


class ContextScenario(Scenario):
    name = "context"
    doc = "the machine's own checkers: sleeping in atomic context, double free, leaks"
    needs = Needs(pool_pages=64)
    counters = ("nowait_failed",)

    def regions(self, ncpus: int) -> list[Region]:
        return [Region("slot", np.dtype("<i8"), NSLOTS)]

    def attach(self, w: World) -> None:
        w.slot_off = [w.offset("slot", i) for i in range(NSLOTS)]

    def operations(self, policy: ContextPolicy) -> tuple[Operation, ...]:
        read_side, free_temporary = policy.read_side, policy.free_temporary
        drop_replaced = policy.drop_replaced

        def temporary(w: World) -> None:
            ref = w.pool.alloc_page(w.cpu, GFP_NOWAIT, TEMP_SITE)
            if ref is None:
                w.count("nowait_failed")
                return
            w.pool.write(w.cpu, ref, 0, w.cpu.id)
            free_temporary(w, ref)

        def keep(w: World, i: int) -> None:
            ref = w.pool.alloc_page(w.cpu, GFP_KERNEL, KEPT_SITE)
            if ref is None:
                return
            old = w.mem.xchg64(w.slot_off[i], ref)
            drop_replaced(w, old)

        return (
            Operation("read_side", 2, read_side),
            Operation("temporary", 4, temporary),
            Operation("keep", 4, keep, (Arg("slot", NSLOTS),)),
        )

    def teardown(self, w: World) -> None:
        for off in w.slot_off:
            ref = w.mem.xchg64(off, 0)
            if ref:
                w.pool.free_page(w.cpu, ref, KEPT_SITE)


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
    mutant(correct, "sync_in_rcu", "invalid-context",
           "Documentation/RCU/checklist.rst: no synchronize_rcu() in a read-side section",
           "synchronize_rcu inside rcu_read_lock", read_side=synchronize_inside_read_section),
    mutant(correct, "double_free", "double-free",
           "mm/page_alloc.c: free_page_is_bad() (a page freed twice)",
           "a page freed twice", free_temporary=free_twice),
    mutant(correct, "leak", "leak",
           "mm/kmemleak.c: an allocated object that nothing references",
           "a replaced page is never freed", drop_replaced=replace_and_forget_old),
)
register(ContextScenario())
