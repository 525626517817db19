"""Log-probabilities in the two OpenAI shapes (completions: parallel lists; chat: content list).

Token strings are each token decoded alone, as vLLM and OpenAI do, so a token that is only part
of a UTF-8 character shows as U+FFFD; `bytes` (chat) carries the exact bytes.
"""

from __future__ import annotations

from functools import lru_cache


class LogprobFormatter:
    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.token = lru_cache(maxsize=65536)(self._token)

    def _token(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def completion(self, ids: list[int], lps: list[float | None],
                   top: list[list[tuple[int, float]]] | None, offset: int) -> dict:
        """`top_logprobs[i]` holds the chosen token plus its top-k alternatives (vLLM's shape);
        positions without a logprob (the first prompt token) are null."""
        tokens = [self.token(t) for t in ids]
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        top_out: list[dict | None] = []
        for i, (t, lp) in enumerate(zip(tokens, lps)):
            if lp is None:
                top_out.append(None)
                continue
            entry = {self.token(a): b for a, b in (top[i] if top and i < len(top) else [])}
            entry.setdefault(t, lp)
            top_out.append(entry)
        return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top_out,
                "text_offset": offsets}

    @staticmethod
    def concat(a: dict, b: dict) -> dict:
        return {k: a[k] + b[k] for k in ("tokens", "token_logprobs", "top_logprobs",
                                         "text_offset")}

    def chat(self, ids: list[int], lps: list[float],
             top: list[list[tuple[int, float]]] | None) -> dict:
        def one(t: int, lp: float) -> dict:
            s = self.token(t)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

        content = []
        for i, (t, lp) in enumerate(zip(ids, lps)):
            alts = top[i] if top and i < len(top) else []
            content.append({**one(t, lp), "top_logprobs": [one(a, b) for a, b in alts]})
        return {"content": content}
