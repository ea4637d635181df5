"""The modelled mm that every mechanism shares: page tables, mm_struct, VMAs and their
RCU-published index, per-CPU TLBs with flush IPIs, the hardware walker, and the quiescent sweep.

A mechanism builds an `MmModel` in its scenario's `attach` and writes its
policies against it; it does not copy it.
"""

from policies.mm.fault import (
    FAULT_FLAG_SPECULATIVE,
    FAULT_RESULTS,
    VM_FAULT_OK,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGSEGV,
    Vmf,
)
from policies.mm.geometry import Geometry
from policies.mm.mm import MM_EXITED, MM_LIVE, MmModel
from policies.mm.sweep import sweep
from policies.mm.vma import (
    MAX_VMAS,
    RESERVED,
    VM_BABY,
    VM_DETACHED,
    VM_READ,
    VM_WRITE,
    VM_ZAPPED,
    VM_ZOMBIE,
)

__all__ = [
    "FAULT_FLAG_SPECULATIVE",
    "FAULT_RESULTS",
    "MAX_VMAS",
    "MM_EXITED",
    "MM_LIVE",
    "RESERVED",
    "VM_BABY",
    "VM_DETACHED",
    "VM_FAULT_OK",
    "VM_FAULT_OOM",
    "VM_FAULT_RETRY",
    "VM_FAULT_SIGSEGV",
    "VM_READ",
    "VM_WRITE",
    "VM_ZAPPED",
    "VM_ZOMBIE",
    "Geometry",
    "MmModel",
    "Vmf",
    "sweep",
]
