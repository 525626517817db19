"""Llama 3.x, Qwen2/2.5 and Qwen3 dense: one decoder, three flavours of the same layers.

Differences are config flags: qkv bias (Qwen2), per-head q/k RMSNorm (Qwen3), Llama-3
rope scaling, tied embeddings.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from minisgl.distributed import TPGroup
from minisgl.env import ENV
from minisgl.layers.decode_gemv import gemv_add, norm_gemv, use_fused_gemv
from minisgl.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from minisgl.layers.fused import flashinfer_ops, use_fused, use_fused_qk_rope_store
from minisgl.layers.norm import RMSNorm
from minisgl.layers.qk_rope_store import qk_rope_store
from minisgl.layers.rotary import RotaryEmbedding
from minisgl.models.config import ModelConfig

if TYPE_CHECKING:
    from minisgl.attention.base import AttentionBackend
    from minisgl.engine.batch import Batch


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, rotary: RotaryEmbedding, tp: TPGroup):
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = cfg.head_dim
        self.num_heads = cfg.num_heads // tp.size
        self.num_kv_heads = max(1, cfg.num_kv_heads // tp.size)
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_bias, tp
        )
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, False, tp)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rotary = rotary

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: Batch,
                attn: AttentionBackend) -> torch.Tensor:
        return self.o_proj(self.core(self.qkv_proj(x), positions, batch, attn))

    def core(self, qkv: torch.Tensor, positions: torch.Tensor, batch: Batch,
             attn: AttentionBackend) -> torch.Tensor:
        """qkv [T, (H + 2 Hkv) D] -> attention output [T, H D], before o_proj."""
        t = qkv.shape[0]
        if use_fused_qk_rope_store(qkv, self.head_dim):
            # norm + rope + KV store in one kernel; attention reads the stored K/V
            q = qk_rope_store(
                qkv, positions, self.rotary.cos_sin(qkv.device),
                None if self.q_norm is None else self.q_norm.weight,
                None if self.k_norm is None else self.k_norm.weight,
                self.q_norm.eps if self.q_norm is not None else 0.0, batch.out_slots,
                attn.kv.k[self.layer_id], attn.kv.v[self.layer_id],
                self.num_heads, self.num_kv_heads, self.head_dim)
            out = attn.attend(q, self.layer_id, batch)  # [T, H, D]
            return out.reshape(t, self.num_heads * self.head_dim)
        q, k, v = qkv.split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
             self.num_kv_heads * self.head_dim], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = attn.forward(q, k, v, self.layer_id, batch)  # [T, H, D]
        return out.reshape(t, self.num_heads * self.head_dim)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup):
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(
            cfg.hidden_size, [cfg.intermediate_size, cfg.intermediate_size], False, tp
        )
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, False, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * I_local]
        if use_fused(gate_up):
            return self.down_proj(flashinfer_ops().activation.silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, rotary: RotaryEmbedding, tp: TPGroup):
        super().__init__()
        self.self_attn = Attention(cfg, layer_id, rotary, tp)
        self.mlp = MLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                batch: Batch, attn: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block with the residual carried separately (fused add + norm)."""
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(h, positions, batch, attn)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual

    def forward_fused(self, h: torch.Tensor, positions: torch.Tensor, batch: Batch,
                      attn: AttentionBackend) -> None:
        """The same block in four fused GEMV kernels (layers/decode_gemv.py) for one-token
        steps: h [T, hidden] is the residual stream, updated in place (one rank only)."""
        a, mlp = self.self_attn, self.mlp
        ln1, ln2 = self.input_layernorm, self.post_attention_layernorm
        qkv = norm_gemv(h, ln1.weight, ln1.eps, a.qkv_proj.weight, a.qkv_proj.bias)
        gemv_add(a.core(qkv, positions, batch, attn), a.o_proj.weight, h)
        act = norm_gemv(h, ln2.weight, ln2.eps, mlp.gate_up_proj.weight, silu=True)
        gemv_add(act, mlp.down_proj.weight, h)


# HF weight name -> (our module path, param name, fused part index)
_RULES = [
    (re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)"),
     lambda m: (f"layers.{m[1]}.self_attn.qkv_proj", m[3], "qkv".index(m[2]))),
    (re.compile(r"model\.layers\.(\d+)\.mlp\.(gate|up)_proj\.weight"),
     lambda m: (f"layers.{m[1]}.mlp.gate_up_proj", "weight", ["gate", "up"].index(m[2]))),
    (re.compile(r"model\.(.*)\.(weight|bias)"), lambda m: (m[1], m[2], 0)),
    (re.compile(r"lm_head\.weight"), lambda m: ("lm_head", "weight", 0)),
]


class CausalLM(nn.Module):
    """Decoder-only LM: embed -> N x DecoderLayer -> norm; lm_head applied by `logits`."""

    def __init__(self, cfg: ModelConfig, tp: TPGroup):
        super().__init__()
        self.cfg = cfg
        self.tp = tp
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                 cfg.rope_scaling)
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, rotary, tp) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp)
        self.rotary = rotary
        self.fused_gemv_max_tokens = ENV.fused_gemv_max_tokens

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: Batch,
                attn: AttentionBackend) -> torch.Tensor:
        """input_ids, positions [T] int64 -> hidden [T, hidden_size]."""
        h, residual = self.embed_tokens(input_ids), None
        if self._fused_gemv(h):
            for layer in self.layers:
                layer.forward_fused(h, positions, batch, attn)
            return self.norm(h)
        for layer in self.layers:
            h, residual = layer(h, residual, positions, batch, attn)
        return self.norm(h, residual)[0]

    def _fused_gemv(self, h: torch.Tensor) -> bool:
        """Steps of at most MINISGL_FUSED_GEMV_MAX_TOKENS tokens on one rank run the fused
        GEMV layers (graphs are captured per batch size, so capture and replay agree)."""
        return (h.shape[0] <= self.fused_gemv_max_tokens and self.tp.size == 1
                and use_fused_gemv(h, self.layers[0].mlp.down_proj.weight))

    def logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head.logits(hidden, out)  # [N, padded_vocab] f32

    def load_weight(self, hf_name: str, tensor: torch.Tensor) -> None:
        if "rotary_emb" in hf_name:
            return
        for pattern, target in _RULES:
            m = pattern.fullmatch(hf_name)
            if m:
                module_path, param, part = target(m)
                break
        else:
            raise ValueError(f"unexpected weight {hf_name!r}")
        module = self.get_submodule(module_path)
        tensor = tensor.to(dtype=module.weight.dtype)
        if hasattr(module, "load"):
            module.load(param, tensor, part)
        else:
            getattr(module, param).data.copy_(tensor)
        if hf_name == "model.embed_tokens.weight" and self.cfg.tie_word_embeddings:
            self.lm_head.load("weight", tensor)

    def expected_weights(self) -> dict[str, tuple[int, ...]]:
        """HF names and full (unsharded) shapes of every weight the checkpoint must hold."""
        c = self.cfg
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
                  "model.norm.weight": (c.hidden_size,)}
        if not c.tie_word_embeddings:
            shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "self_attn.q_proj.weight": (q, c.hidden_size),
                p + "self_attn.k_proj.weight": (kv, c.hidden_size),
                p + "self_attn.v_proj.weight": (kv, c.hidden_size),
                p + "self_attn.o_proj.weight": (c.hidden_size, q),
                p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
                p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
                p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
                p + "input_layernorm.weight": (c.hidden_size,),
                p + "post_attention_layernorm.weight": (c.hidden_size,),
            })
            if c.qkv_bias:
                shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                               p + "self_attn.v_proj.bias": (kv,)})
            if c.qk_norm:
                shapes.update({p + "self_attn.q_norm.weight": (c.head_dim,),
                               p + "self_attn.k_norm.weight": (c.head_dim,)})
        return shapes
