"""Request models of the HTTP API: OpenAI-compatible plus the vLLM / SGLang extension fields.

Unknown fields are kept in `model_extra` (not rejected) so the serving layer can log them once:
clients such as evaluation harnesses send fields we do not implement, and refusing them would
break those clients for no benefit. The exception are fields that would change the answer
(structured output, tools, logit bias, ...): until they are implemented, a request that sets
one to anything but its no-op value is refused with a 400 naming it (`unsupported_fields`),
never answered as if the field were not there.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, conint,
                      model_validator)

# Pydantic's lax mode turns "5" into 5 and true into 1; an API that silently accepts wrong
# types hides client bugs, so the numeric and boolean fields are strict (floats accept ints).
# Bounded to int64: larger values could not cross the msgpack wire to the scheduler.
Int = conint(strict=True, ge=-(2**63), lt=2**63)
Bool = StrictBool
Float = StrictFloat


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        """OpenAI marks most fields nullable and SDKs send `null` for "not set": a null for a
        field with a non-null default takes the default (a required field stays required)."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items()
                if v is not None or k not in fields or fields[k].is_required()
                or fields[k].default is None}


class StreamOptions(_Request):
    include_usage: Bool = False
    continuous_usage_stats: Bool = False


class JsonSchemaFormat(_Request):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: Bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Request):
    """vLLM's `structured_outputs` object (one of its constraints)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    json_: dict | StrictStr | None = Field(default=None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = None
    grammar: StrictStr | None = None
    json_object: Bool | None = None


class _SamplingFields(_Request):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: StrictStr | None = None
    max_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    top_k: Int | None = None
    min_p: Float | None = None
    seed: Int | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    repetition_penalty: Float | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[Int] | None = None
    ignore_eos: Bool = False
    min_tokens: Int = 0
    n: Int = 1
    stream: Bool = False
    stream_options: StreamOptions | None = None
    skip_special_tokens: Bool = True
    include_stop_str_in_output: Bool = False
    user: StrictStr | None = None
    logit_bias: dict[StrictStr, Float] | None = None
    # structured output (see server/constraints.py): OpenAI's, then vLLM's spellings
    response_format: ResponseFormat | None = None
    guided_json: dict | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = None
    guided_grammar: StrictStr | None = None
    structured_outputs: StructuredOutputs | None = None


PromptType = Union[StrictStr, list[StrictStr], list[Int], list[list[Int]]]


class CompletionRequest(_SamplingFields):
    prompt: PromptType
    echo: Bool = False
    logprobs: Int | None = None


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict] | None = None  # assistant: calls it made (server/tools/messages.py)
    tool_call_id: StrictStr | None = None  # tool: the call this answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = None
    logprobs: Bool = False
    top_logprobs: Int | None = None
    add_generation_prompt: Bool = True
    continue_final_message: Bool = False
    chat_template_kwargs: dict | None = None
    # tool calling (shapes checked in server/tools/choice.py, with messages naming the field)
    tools: list | None = None
    tool_choice: StrictStr | dict | None = None
    parallel_tool_calls: Bool | None = None


class TokenizeRequest(_Request):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the chat template."""

    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: Bool = True
    add_generation_prompt: Bool = True
    chat_template_kwargs: dict | None = None


class DetokenizeRequest(_Request):
    tokens: list[Int]


class GenerateRequest(_Request):
    """The seed's simple API: a prompt, a token budget, optional sampling; streams by default."""

    prompt: StrictStr | list[Int]
    max_tokens: Int = 16
    ignore_eos: Bool = False
    temperature: Float = 0.0
    top_p: Float = 1.0
    top_k: Int = -1
    stop: StrictStr | list[StrictStr] | None = None
    stream: Bool = True


def unknown_fields(req: BaseModel) -> list[str]:
    """Names of fields the client sent that no model here declares (nested ones dotted)."""
    names = list(req.model_extra or {})
    for field_name in type(req).model_fields:
        value = getattr(req, field_name)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, BaseModel):
                names += [f"{field_name}.{n}" for n in unknown_fields(item)]
    return sorted(set(names))


# field -> its values that change nothing (None always does)
_OUTPUT_CHANGING: dict[str, tuple] = {
    "tools": ([],),  # completions: tool calling is chat's (a declared field there)
    "tool_choice": ("none", "auto"),  # "auto" without tools is no tool call either
    "functions": ([],),
    "function_call": ("none", "auto"),
    "suffix": ("",), "prediction": (),
}


def unsupported_fields(req: BaseModel) -> list[str]:
    """Fields the client set to a value that would change the output and that this server
    does not implement (best_of other than n included)."""
    extra = req.model_extra or {}
    bad = []
    for name, noop in _OUTPUT_CHANGING.items():
        value = extra.get(name)
        if value is None or any(value == v for v in noop):
            continue
        if name == "tool_choice" and value == "auto" and not extra.get("tools"):
            continue
        bad.append(name)
    best_of = extra.get("best_of")
    if best_of is not None and best_of != getattr(req, "n", 1):
        bad.append("best_of")
    return bad
