"""Every LLM an engine test builds must end the test with no leaked KV pages."""

from __future__ import annotations

import pytest

import minisgl.llm
from tests.helpers.pages import assert_no_leak


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
        assert_no_leak(llm.scheduler)
