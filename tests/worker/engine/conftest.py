"""Every LLM an engine test builds must end the test with no leaked KV pages."""

from __future__ import annotations

import pytest

import minisgl.llm


@pytest.fixture(autouse=True)
def no_page_leaks(monkeypatch):
    built: list = []
    original = minisgl.llm.LLM.__init__

    def tracking_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(minisgl.llm.LLM, "__init__", tracking_init)
    yield
    for llm in built:
        cm = llm.scheduler.cache
        assert not llm.scheduler.has_work
        assert cm.outstanding == 0 and cm.cache.protected_size == 0
        assert cm.pool.num_free + cm.cache.evictable_size // cm.page_size == cm.pool.num_total
