"""The gateway's process set-up (gateway/__main__.py)."""

from __future__ import annotations

import gc

from gateway.__main__ import settle_gc


def test_a_started_process_leaves_its_start_up_objects_out_of_the_collectors_passes() -> None:
    before = gc.get_threshold()
    built_at_start = [object() for _ in range(3)], {"k": "v"}
    try:
        settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= 5000
        # Frozen objects are in no generation: a full pass does not walk them.
        assert not any(o is built_at_start for o in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert any(o is built_at_start for o in gc.get_objects())
