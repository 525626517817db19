"""Shared fixtures: tiny random-weight models built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.tiny_model import build_tiny_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _requires_cuda(item) -> bool:
    return item.get_closest_marker("gpu") is not None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if _requires_cuda(item):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """arch -> directory of a tiny random model with tokenizer (llama, qwen2, qwen3)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: str(build_tiny_model(root / arch, arch)) for arch in ("llama", "qwen2", "qwen3")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> str:
    return tiny_models["llama"]
