"""Structured output: a request's grammar (JSON schema, JSON object, regex, choice, EBNF),
checked here, compiled with xgrammar in the scheduler, applied as a token bitmask in the sampler.

A grammar travels as `SamplingParams.grammar = (kind, source)`, two strings msgpack carries:

    ("json", "<JSON schema text>")   ("json", "")  = any JSON object (OpenAI's json_object)
    ("regex", "<pattern>")           ("choice", '["a", "b"]')   ("ebnf", "<GBNF grammar>")

`check_grammar` (the API and `LLM`) checks the shape; `GrammarBackend` (one per scheduler
rank) compiles and caches. Two things xgrammar 0.2.9 gets wrong for JSON are fixed here:
length-bounded strings (`maxLength`, `minLength`, the `items` of bounded arrays) are compiled
to `[^"\\\r\n]`, which lets raw control characters through (a byte-level tokenizer has a
token for each), so `json.loads` rejects the output: we narrow that class to JSON's own
`[^\0-\x1f"\\]`. And output cannot run on until `max_tokens`: whitespace is fixed (`, ` and
`: `, `any_whitespace=False`), and an unbounded number has at most 16 integer digits, 16
fraction digits and a 3-digit exponent (float64 carries 17 significant digits; bigger
integers do not survive most JSON parsers anyway).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

from minisgl.errors import InvalidRequest

logger = logging.getLogger(__name__)

KINDS = ("json", "regex", "choice", "ebnf")
MAX_SOURCE_CHARS = 256 * 1024  # a grammar larger than this is refused before compiling
MAX_CHOICES = 1024
_CACHE_ENTRIES = 256

# What xgrammar 0.2.9 writes for JSON -> what we compile instead (see the module docstring).
_JSON_FIXES = (
    (r'[^\"\\\r\n]', r'[^\0-\x1f\"\\]'),  # a length-bounded string's character
    ("[1-9] [0-9]*", "[1-9] [0-9]{0,15}"),  # the integer part of an unbounded number
    ("[eE] basic_number_4 basic_number_digits{1, -1}", "[eE] basic_number_4 basic_number_digits{1, 3}"),
    ('"." basic_number_digits{1, -1}', '"." basic_number_digits{1, 16}'),
)


def check_grammar(grammar: Sequence[str] | None, param: str = "response_format") -> tuple[str, str] | None:
    """Shape check of a (kind, source) pair; returns it as a tuple. Raises InvalidRequest."""
    if grammar is None:
        return None
    if len(grammar) != 2 or not all(isinstance(x, str) for x in grammar):
        raise InvalidRequest("a grammar is a (kind, source) pair of strings", param=param)
    kind, source = grammar
    if kind not in KINDS:
        raise InvalidRequest(f"unknown grammar kind {kind!r}; one of {', '.join(KINDS)}", param)
    if len(source) > MAX_SOURCE_CHARS:
        raise InvalidRequest(f"the {kind} grammar is longer than {MAX_SOURCE_CHARS} characters", param)
    if kind == "json":  # "" = any JSON object
        try:
            schema = json.loads(source) if source else {}
        except ValueError as e:
            raise InvalidRequest(f"the JSON schema is not valid JSON: {e}", param) from e
        if not isinstance(schema, dict):
            raise InvalidRequest("a JSON schema must be an object", param)
    elif kind == "choice":
        try:
            choices = json.loads(source)
        except ValueError as e:
            raise InvalidRequest(f"the choices are not a JSON list: {e}", param) from e
        if (not isinstance(choices, list) or not choices or len(choices) > MAX_CHOICES
                or not all(isinstance(c, str) and c for c in choices)):
            raise InvalidRequest(f"choices must be 1 to {MAX_CHOICES} non-empty strings", param)
    elif not source:
        raise InvalidRequest(f"the {kind} grammar is empty", param)
    return (kind, source)


def json_grammar(schema: dict | bool | str | None) -> tuple[str, str]:
    """The grammar for a JSON schema (None: any JSON object)."""
    if schema is None:
        return ("json", "")
    return ("json", schema if isinstance(schema, str) else json.dumps(schema))


def choice_grammar(choices: Sequence[str]) -> tuple[str, str]:
    return ("choice", json.dumps(list(choices)))


def build_grammar(kind: str, source: str) -> Any:
    """The xgrammar.Grammar of a checked (kind, source); raises InvalidRequest if xgrammar
    cannot parse it (an unsupported schema keyword, a bad regex, a GBNF syntax error)."""
    import xgrammar as xgr

    try:
        if kind == "json":
            schema = source or '{"type": "object"}'
            grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True)
            ebnf = fixed = str(grammar)
            for loose, tight in _JSON_FIXES:
                fixed = fixed.replace(loose, tight)
            return grammar if fixed == ebnf else xgr.Grammar.from_ebnf(fixed)
        if kind == "regex":
            return xgr.Grammar.from_regex(source)
        if kind == "choice":
            # GBNF string literals take JSON's escapes.
            alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in json.loads(source))
            return xgr.Grammar.from_ebnf(f"root ::= {alternatives}")
        return xgr.Grammar.from_ebnf(source)
    except Exception as e:  # xgrammar raises RuntimeError / ValueError with its parser message
        name = {"json": "JSON schema", "regex": "regex", "choice": "choice list",
                "ebnf": "grammar"}[kind]
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidRequest(f"cannot compile the {name}: {message}", param="response_format") from e


PADDED_IDS_WARN = 4096  # model ids past the tokenizer's that make xgrammar's accept slow


class GrammarBackend:
    """Compiles grammars for one tokenizer (cached) and fills token bitmasks for a batch.

    Built lazily by the scheduler on its first constrained request: xgrammar's tokenizer
    info for a 150k vocabulary takes a second, which unconstrained serving never pays.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        padded = vocab_size - len(tokenizer)
        if padded > PADDED_IDS_WARN:
            logger.warning(
                "the tokenizer has %d ids, the model %d: xgrammar treats the %d ids past the "
                "tokenizer as special tokens and scans them on every accepted token (~45 us a "
                "token at 151k of them vs ~2 us): constrained decoding will be host-bound; use a "
                "tokenizer that covers the model's vocabulary", len(tokenizer), vocab_size, padded)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self._batch = xgr.BatchGrammarMatcher(max_threads="auto")
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compile_seconds_total = 0.0
        self.compiles_total = 0
        self.cache_hits_total = 0

    def cached(self, grammar: tuple[str, str]) -> Any:
        """The CompiledGrammar of (kind, source) if the cache holds it (a hit), else None."""
        with self._lock:
            compiled = self._cache.get(grammar)
            if compiled is not None:
                self._cache.move_to_end(grammar)
                self.cache_hits_total += 1
            return compiled

    def compile(self, grammar: tuple[str, str]) -> Any:
        """The CompiledGrammar of (kind, source): from the cache, or compiled now (thread-safe:
        the scheduler's compile thread calls it)."""
        compiled = self.cached(grammar)
        if compiled is not None:
            return compiled
        start = time.perf_counter()
        compiled = self.compiler.compile_grammar(build_grammar(*grammar))
        elapsed = time.perf_counter() - start
        with self._lock:
            self.compile_seconds_total += elapsed
            self.compiles_total += 1
            self._cache[grammar] = compiled
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        logger.debug("compiled a %s grammar in %.1f ms", grammar[0], elapsed * 1e3)
        return compiled

    def matcher(self, compiled: Any) -> Any:
        """A fresh matcher (one per choice) at the start of a compiled grammar."""
        return self._xgr.GrammarMatcher(compiled)

    def fill(self, matchers: Sequence[Any]) -> tuple[Any, list[int]]:
        """Bitmask [len(matchers), ceil(V / 32)] int32 on the host (row i from matcher i; rows
        whose matcher is None allow everything) and the constrained rows."""
        bitmask = self._xgr.allocate_token_bitmask(len(matchers), self.vocab_size)
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if len(rows) == 1:
            matchers[rows[0]].fill_next_token_bitmask(bitmask, rows[0])
        elif rows:  # xgrammar's thread pool: a 150k-vocabulary row costs ~0.1 ms on one core
            self._batch.batch_fill_next_token_bitmask([matchers[i] for i in rows], bitmask,
                                                      indices=rows)
        return bitmask, rows

    def stats(self) -> dict[str, float]:
        return {"grammar_compile_seconds_total": self.compile_seconds_total,
                "grammar_compiles_total": self.compiles_total,
                "grammar_cache_hits_total": self.cache_hits_total}


def apply_bitmask(logits: Any, bitmask: Any, rows: Sequence[int]) -> Any:
    """logits [B, V] float32 with rows `rows` masked by the same rows of bitmask [B, W] (a new
    tensor: the raw logits stay as they are, for logprobs)."""
    import xgrammar as xgr

    from minisgl.engine.batch import upload

    out = logits.clone()
    bitmask = upload(bitmask, logits.device)
    xgr.apply_token_bitmask_inplace(out, bitmask, vocab_size=logits.shape[1], indices=list(rows))
    return out
