from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained in the test (splits multi-byte characters)."""
    from transformers import AutoTokenizer

    from tests.helpers.tiny_model import train_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(path)
    return AutoTokenizer.from_pretrained(str(path))
