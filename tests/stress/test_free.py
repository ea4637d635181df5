"""Free-running: delays injected at sampled shared accesses (KCSAN-style), through the C countdown."""

from __future__ import annotations

from types import SimpleNamespace

from shm import Memory
from stress.schedulers.free import FreeScheduler


def test_delays_fall_on_sampled_accesses_and_stop_at_exit():
    mem = Memory(bytearray(64))
    sched = FreeScheduler(seed=1, max_delay_us=1.0, delay_every=8)
    sched.attach(SimpleNamespace(id=0))
    try:
        for _ in range(800):
            mem.load32(0)
    finally:
        sched.exit(None)
    assert 50 <= sched.delays <= 200, sched.delays  # a geometric gap of mean 8: about 100
    seen = sched.delays
    for _ in range(100):
        mem.load32(0)
    assert sched.delays == seen


def test_no_delay_is_injected_when_off():
    mem = Memory(bytearray(64))
    sched = FreeScheduler(seed=1, delay_every=0)
    sched.attach(SimpleNamespace(id=0))
    for _ in range(100):
        mem.load32(0)
    sched.exit(None)
    assert sched.delays == 0
