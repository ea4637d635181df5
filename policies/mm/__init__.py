"""The modelled mm that every mechanism shares: page tables, mm_struct, VMAs and their
RCU-published index, per-CPU TLBs with flush IPIs, the hardware walker, and the quiescent sweep.

A mechanism's scenario extends `MmScenario` (regions, attach, boot, sweep,
teardown, the model's counters) and its policy class extends `MmPolicy` (the
hooks the model calls: vma_free, remove_tables, the model class); its
policies are written against the `MmModel` it builds, which it does not copy.
"""

from policies.mm.geometry import Geometry
from policies.mm.gup import FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE, GUP_MUST_UNSHARE
from policies.mm.mm import MM_EXITED, MM_LIVE, MmModel
from policies.mm.policy import MmPolicy
from policies.mm.scenario import MmScenario
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
from policies.mm.vmf import (
    FAULT_FLAG_SPECULATIVE,
    FAULT_FLAG_UNSHARE,
    FAULT_RESULTS,
    VM_FAULT_OK,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGSEGV,
    Vmf,
)

__all__ = [
    "FAULT_FLAG_SPECULATIVE",
    "FAULT_FLAG_UNSHARE",
    "FOLL_GET",
    "FOLL_LONGTERM",
    "FOLL_PIN",
    "FOLL_WRITE",
    "GUP_MUST_UNSHARE",
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
    "MmPolicy",
    "MmScenario",
    "Vmf",
    "sweep",
]
