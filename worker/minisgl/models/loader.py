"""Fill a model from HF safetensors (single file or sharded index), or with random weights."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    return sorted(model_dir.glob("*.safetensors"))


def load_weights(model, model_dir: Path, device: torch.device) -> None:
    from safetensors import safe_open

    files = safetensors_files(model_dir)
    if not files:
        raise ValueError(f"no *.safetensors in {model_dir}; pass --dummy-weight for random weights")
    expected = set(model.expected_weights())
    seen: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for name in st.keys():
                if name not in expected:
                    if "rotary_emb" in name or (name == "lm_head.weight"):
                        continue
                    raise ValueError(f"{f.name}: unexpected weight {name!r}")
                model.load_weight(name, st.get_tensor(name).to(device))
                seen.add(name)
    missing = expected - seen
    if missing:
        raise ValueError(f"checkpoint in {model_dir} lacks {len(missing)} weights, "
                         f"e.g. {sorted(missing)[:3]}")
    logger.info("loaded %d tensors from %d files", len(seen), len(files))


def init_dummy_weights(model, device: torch.device, seed: int = 0, std: float = 0.02) -> None:
    """Random weights identical on every TP rank: each full tensor comes from a generator seeded
    by (seed, name) and is then sharded by the layer's own loader. Norm weights are ones."""
    for name, shape in model.expected_weights().items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            model.load_weight(name, torch.ones(shape, device=device))
            continue
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        gen = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        t = torch.empty(shape, device=device, dtype=torch.float32)
        scale = 1.0 if "embed" in name else std
        model.load_weight(name, t.normal_(0.0, scale, generator=gen))
