"""The app's start-up and shutdown: process-wide settings it makes and puts back."""

from __future__ import annotations

import gc

from comfyhub.app import GC_THRESHOLDS, create_app


async def test_the_app_freezes_its_start_up_objects_and_puts_the_collector_back(settings):
    before = gc.get_threshold()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
