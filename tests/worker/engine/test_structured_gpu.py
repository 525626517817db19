"""Structured output on CUDA: xgrammar's bitmask kernel in the sampler, the fast defaults
(FlashInfer, CUDA graphs, overlap), constrained rows beside unconstrained ones in one batch."""

from __future__ import annotations

import json
from typing import Literal

import pydantic
import pytest
import torch

from minisgl import LLM, SamplingParams
from tests.helpers.tiny_model import build_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10},
    "n": {"type": "integer", "minimum": 0, "maximum": 999},
    "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}},
    "required": ["name", "n", "tags"], "additionalProperties": False}


class Record(pydantic.BaseModel):  # SCHEMA as a strict pydantic model (no jsonschema on the device)
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    name: str = pydantic.Field(max_length=10)
    n: int = pydantic.Field(ge=0, le=999)
    tags: list[Literal["x", "y"]] = pydantic.Field(max_length=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    # FlashInfer kernels need head_dim 64/128/256.
    return str(build_tiny_model(tmp_path_factory.mktemp("gpu") / "qwen3", "qwen3", hidden_size=256,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                                max_position_embeddings=2048))


@pytest.mark.parametrize("overlap", [True, False])
def test_constrained_and_free_rows_in_one_batch(model, overlap):
    llm = LLM(model, device="cuda", dtype="bfloat16", num_pages=4096, disable_overlap=not overlap)
    free = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    alone = llm.generate(["hello model"], free)[0].token_ids
    prompts, params = [], []
    for i in range(24):
        prompts.append(f"request {i}")
        params.append(SamplingParams(max_tokens=200, temperature=1.0, seed=i,
                                     grammar=("json", json.dumps(SCHEMA))))
    prompts.append("hello model")
    params.append(free)
    outs = llm.generate(prompts, params)
    for out in outs[:-1]:
        assert out.finish_reason == "stop", out.text
        Record.model_validate_json(out.text)
    assert outs[-1].token_ids == alone  # the mask touched only its own rows
    choice = llm.generate(["pick"] * 8, SamplingParams(max_tokens=8, temperature=1.0,
                                                       grammar=("choice", '["left", "right"]')))
    assert {o.text for o in choice} <= {"left", "right"}
