"""shm: the machine.  Shared segments, atomics, locks, refcounts, RCU, CPUs, the page pool.

It knows nothing of mm and nothing of how it is driven.
"""

from shm._atomic import Memory, Walker, cpu_relax
from shm.cpu import Cpu
from shm.events import KINDS, address
from shm.layout import Layout, LayoutError, Region
from shm.locks import (
    MUTEX,
    RWSEM,
    SEQCOUNT,
    SPINLOCK,
    Mutex,
    Seqcount,
    Spinlock,
    wait_var_event,
    wake_up_var,
)
from shm.machine import MAX_CPUS, Machine
from shm.pool import GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, Pool, alloc_site, gen_of, pfn_of
from shm.protocols import Scheduler
from shm.rcu import Rcu, RcuFlavor, rcu_callback
from shm.refcount import PERCPU_REF, REFCOUNT, PercpuRef, Refcount
from shm.rwsem import Rwsem
from shm.sched import OsScheduler
from shm.segment import Segment, clean_dead_segments, list_segments, new_run_id
from shm.srcu import Srcu

__all__ = [
    "GFP_ATOMIC",
    "GFP_KERNEL",
    "GFP_NOWAIT",
    "KINDS",
    "MAX_CPUS",
    "MUTEX",
    "PERCPU_REF",
    "REFCOUNT",
    "RWSEM",
    "SEQCOUNT",
    "SPINLOCK",
    "Cpu",
    "Layout",
    "LayoutError",
    "Machine",
    "Memory",
    "Mutex",
    "OsScheduler",
    "PercpuRef",
    "Pool",
    "Rcu",
    "RcuFlavor",
    "Refcount",
    "Region",
    "Rwsem",
    "Scheduler",
    "Segment",
    "Seqcount",
    "Spinlock",
    "Srcu",
    "Walker",
    "address",
    "alloc_site",
    "clean_dead_segments",
    "cpu_relax",
    "gen_of",
    "list_segments",
    "new_run_id",
    "pfn_of",
    "rcu_callback",
    "wait_var_event",
    "wake_up_var",
]
