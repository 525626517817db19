"""Tokenization: text or token ids -> validated token ids, before the scheduler sees them.

Validation happens here, early and cheaply: empty prompts, token ids outside the vocabulary,
and prompt + max_tokens beyond the context come back to the API process as an ErrorMsg.
The processes that run it are in process.py (with `--num-tokenizer 0` the detokenizer does).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from minisgl.errors import ContextTooLong, InvalidRequest, MiniSGLError
from minisgl.message.frontend import ErrorMsg
from minisgl.message.tokenizer import TokenizedMsg, TokenizeMsg

logger = logging.getLogger(__name__)

# SamplingParams.extra key: max_tokens was not given by the client; cap it to what fits.
AUTO_MAX_TOKENS = "auto_max_tokens"


def load_tokenizer(path: str) -> Any:
    """The Hugging Face tokenizer of a model directory, a tokenizer-only directory or a
    built-in name ('demo' resolves to our files)."""
    from transformers import AutoTokenizer

    from minisgl.models import resolve_tokenizer_path

    return AutoTokenizer.from_pretrained(str(resolve_tokenizer_path(path)))


def model_vocab_size(model_path: str) -> int | None:
    from minisgl.models import resolve_model_path

    config = json.loads((resolve_model_path(model_path) / "config.json").read_text())
    return config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")


class TokenizeManager:
    """Turns a TokenizeMsg into a TokenizedMsg or raises InvalidRequest / ContextTooLong."""

    def __init__(self, tokenizer: Any, max_model_len: int, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size or len(tokenizer)

    def tokenize(self, msg: TokenizeMsg) -> TokenizedMsg:
        params = msg.params.validate()
        if isinstance(msg.prompt, str):
            ids = self.tokenizer.encode(msg.prompt, add_special_tokens=msg.add_special_tokens)
        else:
            ids = list(msg.prompt)
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"token id {bad[0]!r} is outside the vocabulary [0, {self.vocab_size})",
                    param="prompt",
                )
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        room = self.max_model_len - len(ids)
        if room <= 0:
            raise ContextTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens, "
                f"but the prompt has {len(ids)} tokens. Please shorten the prompt."
            )
        if params.extra.get(AUTO_MAX_TOKENS) and params.max_tokens > room:
            params = params.replace(max_tokens=room)
        if params.max_tokens > room:
            raise ContextTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {len(ids) + params.max_tokens} tokens ({len(ids)} in the prompt, "
                f"{params.max_tokens} in the completion). Please reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        return TokenizedMsg(uid=msg.uid, input_ids=ids, params=params, arrival_time=msg.arrival_time)

    def try_tokenize(self, msg: TokenizeMsg) -> TokenizedMsg | ErrorMsg:
        try:
            return self.tokenize(msg)
        except (MiniSGLError, ValueError, TypeError) as exc:
            logger.info("request %d rejected: %s", msg.uid, exc)
            return ErrorMsg.from_exception(msg.uid, exc)
