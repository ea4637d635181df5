"""A booted vma_lookup world on one CPU in this process, and what the model's unit tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from policies import World, get_scenario
from policies.mm import VM_FAULT_OK
from shm import Cpu, Machine, Segment, new_run_id
from shm.rcu import invoke_callback
from shm.sched import OsScheduler


@contextmanager
def world_of(policy: str, **changes) -> Iterator[World]:
    """A booted vma_lookup world of `policy` (with `changes` to its fields) on cpu 0 of 2."""
    sc = get_scenario("vma_lookup")
    pol = replace(sc.policy(policy), **changes)
    run = new_run_id()
    m = Machine.create(run, ncpus=2, pool_pages=sc.needs.pool_pages, page_size=sc.needs.page_size, keep_going=True)
    seg = Segment.create(sc.layout(2), run, 1)
    m.add_segment(seg)
    try:
        w = World(m, Cpu(m, 0), sc, pol, seg, 2)
        sc.attach(w)
        sc.setup(w)
        yield w
    finally:
        m.rcu.stop_kthread()
        seg.unlink()
        m.unlink()
        m.close()


def counter(w: World, name: str) -> int:
    return w.counts[w.counter_index[name]]


def checks(w: World) -> list[str]:
    return [f["check"] for f in w.machine.findings()]


def drain_rcu(w: World) -> None:
    """Run the queued call_rcu callbacks here (no kthread in this process)."""
    rcu, mem = w.rcu, w.machine.mem
    for i in range(w.machine.nslots):
        for k in range(mem.load64(rcu.tail_off[i]), mem.load64(rcu.head_off[i])):
            e = rcu.entries_off[i] + (k % 1024) * 16
            invoke_callback(w.cpu, mem.load32(e), mem.load64(e + 8))
        mem.store64(rcu.tail_off[i], mem.load64(rcu.head_off[i]))


def quiet(w: World) -> list[str]:
    """The findings once the queued callbacks ran and the quiescent sweep looked."""
    from policies.mm import sweep

    drain_rcu(w)
    sweep(w.mm, w.cpu)
    return checks(w)


def touch(w: World, vpn: int, write: bool = True) -> None:
    m = w.mm
    for _ in range(3):
        if m.access(w.cpu, 0, vpn, write):
            return
        assert w.policy.fault(w, 0, vpn, write) == VM_FAULT_OK
    raise AssertionError("access did not succeed after faults")


def pte_at(w: World, vpn: int) -> int:
    table = w.mm.walk_pte_table(w.cpu, 0, vpn, "test")
    return w.mm.read_entry(w.cpu, table, vpn % w.mm.geometry.pte, "test") if table else 0


class AtWindow(OsScheduler):
    """Runs `then` once, when the CPU reaches the window `name` (another CPU acting there)."""

    def __init__(self, name: str, then):
        self.name, self.then = name, then

    def window(self, cpu, name):
        if name == self.name and self.then:
            then, self.then = self.then, None
            then()
            return True
        return False
