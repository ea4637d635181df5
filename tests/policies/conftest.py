"""The `world` fixture: a booted vma_lookup world of the policy the test names (mmap_lock)."""

import pytest

from tests.policies.mmworld import world_of


@pytest.fixture(params=["mmap_lock"])
def world(request):
    with world_of(request.param) as w:
        yield w
