"""The HTTP API: `create_app(frontend, args)` -> FastAPI (DESIGN.md "Worker: HTTP API").

Everything per-server lives on `app.state` (frontend, metrics, api key, limits); the routes
read it from the request, so two apps in one process never share state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from minisgl.env import ENV
from minisgl.errors import Conflict, InvalidRequest, ModelNotFound, ServiceUnavailable
from minisgl.sampling_params import SamplingParams
from minisgl.server import openai_serving as oai
from minisgl.server.access import AccessControl, QueueFull, RateLimited
from minisgl.server.errors import (DEFAULT_MAX_BODY_BYTES, error_response, install_error_handlers,
                                   read_json)
from minisgl.server.generation import GenerationRun, wait_disconnected
from minisgl.server.logprobs import LogprobFormatter
from minisgl.server.metrics import CONTENT_TYPE, ServerMetrics
from minisgl.server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                     GenerateRequest, TokenizeRequest, unknown_fields,
                                     unsupported_fields)
from minisgl.server.tools import default_parser_for_template

logger = logging.getLogger(__name__)

try:
    __version__ = version("minisgl")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

router = APIRouter()


class _SSEResponse(StreamingResponse):
    """A StreamingResponse that always closes its body and run, also when the client left
    before the first byte (Starlette cancels the sender but never closes the iterator)."""

    def __init__(self, body, on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self._on_close()


def _check_auth(request: Request) -> str | None:
    """The caller's API key (None when the server has none); Unauthorized otherwise."""
    return request.app.state.access.authenticate(request.headers.get("authorization"))


def _check_accepting(frontend) -> None:
    if getattr(frontend, "draining", False):
        raise ServiceUnavailable("the server is shutting down")
    if not getattr(frontend, "ready", True):
        raise ServiceUnavailable("the server is not ready yet")


def _check_model(frontend, model: str | None) -> None:
    if model and model != frontend.model_name:
        raise ModelNotFound(f"The model '{model}' does not exist; this server serves "
                            f"'{frontend.model_name}'")


async def _parse(request: Request, model: type[BaseModel], generation: bool = True) -> BaseModel:
    state = request.app.state
    key = _check_auth(request)
    _check_accepting(state.frontend)
    if generation:  # per-key limits, then the server's queue (429 / 503 with Retry-After)
        waiting = state.frontend.in_flight - state.max_running
        state.access.admit(key, waiting)
        request.scope.setdefault("state", {})["api_key"] = key
    req = await read_json(request, model, state.max_body_bytes)
    refused = unsupported_fields(req)
    if refused:
        raise InvalidRequest(f"'{refused[0]}' is not supported by this server yet; the request "
                             f"is refused rather than answered as if it were not set",
                             param=refused[0])
    extra = unknown_fields(req)
    if extra:
        logger.warning("%s: ignoring unknown fields %s", request.url.path, ", ".join(extra))
    return req


async def _respond(request: Request, run: GenerationRun, stream: bool,
                   events: Callable[[], object], whole: Callable[[], Awaitable[dict]]) -> Response:
    """Start the run (engine errors -> 4xx) and answer as SSE or as one JSON object."""
    try:
        await run.start()
    except Exception as e:
        return error_response(e)
    if stream:
        return _SSEResponse(events(), on_close=lambda: run.close("abort"))
    collect = asyncio.ensure_future(whole())
    watch = asyncio.ensure_future(wait_disconnected(request.receive))
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():  # client gone: abort the generation end to end
            collect.cancel()
            await asyncio.gather(collect, return_exceptions=True)
            return Response(status_code=499)
        return JSONResponse(collect.result())
    except Exception as e:
        return error_response(e)
    finally:
        watch.cancel()
        collect.cancel()
        await run.close("abort")


async def _collect(builder: oai.ResponseBuilder) -> dict:
    async with aclosing(builder.run.chunks()) as chunks:
        async for p, chunk in chunks:
            builder.add(p, chunk)
    return builder.response()


async def _sse_openai(builder: oai.ResponseBuilder, opts) -> object:
    include = bool(opts and opts.include_usage)
    continuous = bool(opts and opts.continuous_usage_stats)
    async with aclosing(oai.stream_events(builder, include, continuous)) as events:
        async for event in events:
            yield event


def _reject(request: Request, e: Exception) -> Response:
    metrics = request.app.state.metrics
    metrics.request_finished("error")
    if isinstance(e, RateLimited):
        metrics.rate_limited.inc()
    elif isinstance(e, QueueFull):
        metrics.shed.inc()
    return error_response(e)


def _run(request: Request, prompts: list, params: SamplingParams, prefix: str) -> GenerationRun:
    """A generation run whose tokens count against the caller's tokens-per-minute."""
    state = request.app.state
    key = request.scope.get("state", {}).get("api_key")
    return GenerationRun(state.frontend, state.metrics, prompts, params, _request_id(request, prefix),
                         on_tokens=lambda n: state.access.record_tokens(key, n))


async def _respond_openai(request: Request, builder: oai.ResponseBuilder, req) -> Response:
    """The completions and chat answer: SSE events or one object, both from the builder."""
    return await _respond(request, builder.run, req.stream,
                          lambda: _sse_openai(builder, req.stream_options), lambda: _collect(builder))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = request.app.state
    frontend = state.frontend
    try:
        req = await _parse(request, CompletionRequest)
        _check_model(frontend, req.model)
        prompts, params = oai.build_completion(req, frontend.max_model_len)
    except Exception as e:
        return _reject(request, e)
    run = _run(request, prompts, params, "cmpl")
    echo = [p if isinstance(p, str) else "" for p in prompts] if req.echo else None
    builder = oai.ResponseBuilder(run, frontend.model_name, False, state.formatter, echo)
    return await _respond_openai(request, builder, req)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = request.app.state
    frontend = state.frontend
    try:
        req = await _parse(request, ChatCompletionRequest)
        _check_model(frontend, req.model)
        # Templating and tokenizing a huge conversation must not stall every stream and
        # /health: off the event loop, on one thread (HF tokenizers are not re-entrant).
        ids, params, tools = await asyncio.get_running_loop().run_in_executor(
            state.tokenize_pool, oai.build_chat, req, frontend.tokenizer, frontend.max_model_len,
            state.tool_parser)
    except Exception as e:
        return _reject(request, e)
    run = _run(request, [ids], params, "chatcmpl")
    builder = oai.ResponseBuilder(run, frontend.model_name, True, state.formatter,
                                  reasoning_parser=state.reasoning_parser, tools=tools,
                                  tool_parser=state.tool_parser)
    return await _respond_openai(request, builder, req)


@router.post("/generate")
async def generate(request: Request) -> Response:
    """The seed's API: SSE events `{"text", "token_ids", "finished", "finish_reason"}`."""
    state = request.app.state
    frontend = state.frontend
    try:
        req = await _parse(request, GenerateRequest)
        if isinstance(req.prompt, (str, list)) and len(req.prompt) == 0:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if req.max_tokens < 1 or req.max_tokens > frontend.max_model_len:
            raise InvalidRequest(f"max_tokens must be in [1, {frontend.max_model_len}]",
                                 param="max_tokens")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        params = SamplingParams(max_tokens=req.max_tokens, ignore_eos=req.ignore_eos,
                                temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                stop=stop).validate()
    except Exception as e:
        return _reject(request, e)
    run = _run(request, [req.prompt], params, "gen")

    async def events():
        async with aclosing(run.chunks()) as chunks:
            async for _, c in chunks:
                yield oai.sse({"text": c.text, "token_ids": c.token_ids, "finished": c.finished,
                               "finish_reason": c.finish_reason})
        yield oai.sse("[DONE]")

    async def whole() -> dict:
        text, ids, reason, usage = [], [], None, {}
        async with aclosing(run.chunks()) as chunks:
            async for _, c in chunks:
                text.append(c.text)
                ids += c.token_ids
                reason = c.finish_reason or reason
                if c.num_prompt_tokens:
                    usage["prompt_tokens"] = c.num_prompt_tokens
        usage["completion_tokens"] = len(ids)
        return {"text": "".join(text), "token_ids": ids, "finish_reason": reason, "usage": usage}

    return await _respond(request, run, req.stream, events, whole)


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    """vLLM's /tokenize: `prompt` (special tokens per add_special_tokens) or `messages` (chat
    template applied) -> {"tokens", "count", "max_model_len"}."""
    state = request.app.state
    fe = state.frontend
    try:
        req = await _parse(request, TokenizeRequest, generation=False)
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequest("send exactly one of prompt and messages", param="prompt")

        def run() -> list[int]:
            if req.messages is not None:
                text = oai.render_chat(fe.tokenizer, req.messages, req.add_generation_prompt,
                                       template_kwargs=req.chat_template_kwargs)
                return fe.tokenizer.encode(text, add_special_tokens=False)
            return fe.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)

        ids = await asyncio.get_running_loop().run_in_executor(state.tokenize_pool, run)
    except Exception as e:
        return error_response(e)
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": fe.max_model_len})


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    state = request.app.state
    fe = state.frontend
    try:
        req = await _parse(request, DetokenizeRequest, generation=False)
        vocab = len(fe.tokenizer)
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the tokenizer's [0, {vocab})",
                                 param="tokens")
        text = await asyncio.get_running_loop().run_in_executor(
            state.tokenize_pool, fe.tokenizer.decode, req.tokens)
    except Exception as e:
        return error_response(e)
    return JSONResponse({"prompt": text})


def _request_id(request: Request, prefix: str) -> str:
    """The client's X-Request-Id (also echoed in the response), else a fresh one."""
    return request.scope.get("state", {}).get("request_id") or f"{prefix}-{uuid.uuid4().hex}"


class _RequestIdMiddleware:
    """X-Request-Id: kept from the request (or made), put in the scope for the handlers' logs
    and returned on every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:128]
        rid = given.strip() or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid if given.strip() else None

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_id)


@router.post("/flush_cache")
async def flush_cache(request: Request) -> Response:
    """SGLang's /flush_cache: empty the prefix cache (between benchmark runs, after the
    weights changed). 200 with the cached tokens dropped; 409 while requests run."""
    try:
        _check_auth(request)
        try:
            dropped = await request.app.state.frontend.flush_cache()
        except TimeoutError:
            raise ServiceUnavailable("the scheduler did not answer the flush in time") from None
        if dropped is None:
            raise Conflict("requests are running: the prefix cache was not flushed; retry "
                           "when the server is idle")
    except Exception as e:
        return error_response(e)
    return JSONResponse({"flushed": True, "dropped_tokens": dropped})


@router.get("/v1/models")
async def models(request: Request) -> Response:
    _check_auth(request)
    fe = request.app.state.frontend
    card = {"id": fe.model_name, "object": "model", "created": request.app.state.created,
            "owned_by": "minisgl", "root": getattr(fe, "model_path", fe.model_name),
            "max_model_len": fe.max_model_len}
    return JSONResponse({"object": "list", "data": [card]})


@router.get("/health")
async def health(request: Request) -> Response:
    fe = request.app.state.frontend
    ok, reason = fe.health()
    body = {"status": "ok" if ok else "unhealthy", "phase": "ready", "timestamp": time.time(),
            "version": __version__, "model": fe.model_name,
            "startup_seconds": getattr(fe, "startup_seconds", None)}
    if not ok:
        body["reason"] = reason
    return JSONResponse(body, status_code=200 if ok else 503)


def _is_ready(frontend) -> bool:
    return bool(frontend.ready) and not frontend.draining


@router.get("/ready")
async def ready(request: Request) -> Response:
    fe = request.app.state.frontend
    if _is_ready(fe):
        return JSONResponse({"status": "ready", "model": fe.model_name})
    status = "draining" if fe.draining else "starting"
    return JSONResponse({"status": status, "model": fe.model_name}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


def _fastapi(**kwargs) -> FastAPI:
    """FastAPI without its built-in OpenTelemetry hooks (FastAPI >= 0.16x): we export our own
    Prometheus metrics, and the hooks probe the OTel providers on every request."""
    try:
        return FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False}, **kwargs)
    except TypeError:  # an older FastAPI: no such hooks
        return FastAPI(**kwargs)


def create_app(frontend, args) -> FastAPI:
    """Build the app around a FrontendManager; the lifespan starts and stops the frontend."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await frontend.start()
        try:
            yield
        finally:
            await frontend.stop()

    app = _fastapi(title="minisgl", version=__version__, lifespan=lifespan,
                   docs_url=None, redoc_url=None)
    app.state.frontend = frontend
    app.state.created = int(time.time())
    app.state.access = AccessControl(
        getattr(args, "api_key", None) or ENV.api_key,
        getattr(args, "api_key_file", None), getattr(args, "max_queued_requests", None))
    app.state.max_running = getattr(args, "max_running_requests", 256)
    app.state.max_body_bytes = getattr(args, "max_request_bytes", None) or DEFAULT_MAX_BODY_BYTES
    app.state.metrics = ServerMetrics(frontend.model_name, frontend.stats,
                                      lambda: _is_ready(frontend),
                                      getattr(frontend, "startup_seconds", None))
    app.state.formatter = LogprobFormatter(frontend.tokenizer)
    app.state.tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="api-tokenize")
    app.state.reasoning_parser = getattr(args, "reasoning_parser", None)
    # --tool-call-parser, else what the chat template's markup implies (None: none)
    app.state.tool_parser = (getattr(args, "tool_call_parser", None)
                             or default_parser_for_template(
                                 getattr(frontend.tokenizer, "chat_template", None)))
    install_error_handlers(app)
    app.include_router(router)
    origins = list(getattr(args, "allowed_origins", ()) or ())
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(_RequestIdMiddleware)
    return app
