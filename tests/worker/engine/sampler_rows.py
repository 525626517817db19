"""A minimal SampleRow for sampler tests (the scheduler's Req in miniature)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minisgl.engine.sampler import make_generator
from minisgl.sampling_params import SamplingParams


@dataclass
class Row:
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


def row(output_ids=(), prompt_ids=(), device: str = "cpu", **params) -> Row:
    sp = SamplingParams(**params).validate()
    gen = make_generator(sp.seed, device) if sp.seed is not None else None
    return Row(sp, list(output_ids), list(prompt_ids), gen)
