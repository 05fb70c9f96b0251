"""`xinslm serve`: an OpenAI-compatible HTTP API over the batched engine, and the chat page.

    POST /v1/chat/completions   a reply to a conversation (chat.pt); streamed on request
    POST /v1/completions        a continuation of a text (base.pt); streamed on request
    GET  /v1/models             the one model: the checkpoint file's stem ("chat")
    GET  /health                {"status": "ok"}
    GET  /                      the chat page (static/index.html)

Why FastAPI on uvicorn: it is the stack of nanochat's chat server and of the OpenAI-compatible
servers of litgpt and vLLM, so clients meet the well-trodden behaviour (server-sent events,
status codes), and pydantic checks each field of a request and names the wrong one, which
becomes OpenAI's error JSON with `param` set. The engine runs in its own thread
(engine_worker.py); the event loop only parses, streams and waits, so concurrent requests
share the engine's batch. Every error is OpenAI's `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xinslm.chat_template import render_prompt
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.config import SamplingError
from xinslm.device import pick_device
from xinslm.engine import Engine
from xinslm.engine_worker import EngineFailed, EngineWorker, Job
from xinslm.errors import XinslmError
from xinslm.openai_schema import (
    ChatKind,
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    TextKind,
    error_body,
    usage,
    validation_message,
)
from xinslm.reply_text import ReplyText
from xinslm.sampling import Sampling
from xinslm.tokenizer import tokenizer_for
from xinslm.tool_calls import Calculator

PAGE = Path(__file__).parent / "static" / "index.html"
API_KEY_ENV = "XINSLM_API_KEY"


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """What `xinslm serve` serves and how (the CLI's flags)."""

    checkpoint: str = "checkpoints/chat.pt"
    device: str = "auto"
    api_key: str | None = None  # None: no key needed
    max_batch: int = 8
    encodings_dir: str = "../shared/data/tiktoken"
    max_body_bytes: int = 1 << 20


class ApiError(Exception):
    """A request that gets an error response: status and OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        type_ = "server_error" if self.status >= 500 else "invalid_request_error"
        body = error_body(self.message, type_, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)


# --- the model behind the API ----------------------------------------------------------


class ModelService:
    """The checkpoint's model on its engine thread, its tokenizer, and its name."""

    def __init__(self, settings: ServeSettings) -> None:
        path = Path(settings.checkpoint)
        ckpt = load_checkpoint(path)
        self.device = pick_device(settings.device)
        model = model_from_checkpoint(ckpt).to(self.device)
        self.tokenizer = tokenizer_for(ckpt["tokenizer"], path, settings.encodings_dir)
        self.calculator = Calculator(self.tokenizer)  # answers a chat reply's calculator calls
        self.worker = EngineWorker(lambda: Engine(model, max_batch=settings.max_batch))
        self.context_len = model.config.context_len
        self.model_id, self.created = path.stem, int(path.stat().st_mtime)

    def model_card(self) -> dict:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "xinslm",
        }

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id:
            message = f"The model '{name}' does not exist: this server serves '{self.model_id}'."
            raise ApiError(404, message, param="model", code="model_not_found")

    def sampling(self, body: GenerationRequest, prompt_len: int, prompt_param: str) -> Sampling:
        """The request's sampling settings; a 400 if the prompt or max_tokens does not fit, or
        a setting is out of Sampling's bounds (naming the request's field)."""
        context = self.context_len
        if prompt_len >= context:
            message = (
                f"This model's maximum context length is {context} tokens, but the prompt has "
                f"{prompt_len} tokens. Please shorten the {prompt_param}."
            )
            raise ApiError(400, message, param=prompt_param, code="context_length_exceeded")
        room = context - prompt_len
        name, wanted = body.wanted_tokens()
        if wanted is not None and wanted > room:
            message = (
                f"{name} is {wanted}, but the prompt's {prompt_len} tokens leave room for at "
                f"most {room} in this model's context of {context} tokens."
            )
            raise ApiError(400, message, param=name)
        try:
            return Sampling(
                max_new_tokens=room if wanted is None else wanted,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_k=body.top_k,
                top_p=body.top_p,
                seed=secrets.randbits(63) if body.seed is None else body.seed,
            )
        except SamplingError as e:
            param = name if e.setting == "max_new_tokens" else e.setting
            raise ApiError(
                400, f"Invalid '{param}': {e.problem}.", param, "invalid_value"
            ) from None


# --- generating a response -------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    """One response under way: its identity, its job in the engine and its text."""

    kind: type[ChatKind] | type[TextKind]
    model: str
    job: Job
    text: ReplyText
    prompt_tokens: int
    include_usage: bool = False
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def envelope(self, object_: str) -> dict:
        return {
            "id": self.kind.id_prefix + self.id,
            "object": object_,
            "created": self.created,
            "model": self.model,
        }

    def usage(self) -> dict:
        return usage(self.prompt_tokens, len(self.text.tokens))

    def whole(self) -> dict:
        choice = self.kind.choice(self.text.text, self.text.finish_reason)
        return {**self.envelope(self.kind.object), "choices": [choice], "usage": self.usage()}

    def chunk(self, choices: list[dict]) -> str:
        chunk = {**self.envelope(self.kind.chunk_object), "choices": choices}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: null on every chunk but the last
        return _event(chunk)

    def usage_chunk(self) -> str:
        return _event(
            {**self.envelope(self.kind.chunk_object), "choices": [], "usage": self.usage()}
        )


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _pieces(reply: Reply) -> AsyncGenerator[str, None]:
    """The reply's new text at each step ("" while held back), to its end."""
    try:
        async for update in reply.job.updates():
            yield reply.text.add(update.tokens)
            if reply.text.stopped:
                return  # a stop string: the engine's sequence is cancelled below
            if update.finish_reason is not None:
                yield reply.text.finish(update.finish_reason)
    finally:
        reply.job.cancel()  # the client left, or a stop string; a no-op after the end


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, job: Job) -> AsyncIterator[None]:
    """Cancel the job if the client disconnects while the block runs (the body is read by
    then, so the next message from the server is the disconnect)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def _respond(request: Request, reply: Reply, stream: bool) -> Response:
    pieces = _pieces(reply)
    try:
        async with _cancel_on_disconnect(request, reply.job):
            if not stream:
                async for _ in pieces:
                    pass
                return JSONResponse(reply.whole())
            # The first step before the 200: if the engine fails the prefill, the client
            # gets a 500, not a broken stream.
            first = await anext(pieces)
    except EngineFailed as e:
        raise _engine_error(e) from None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _events(reply, first, pieces), media_type="text/event-stream", headers=headers
    )


async def _events(
    reply: Reply, first: str, pieces: AsyncGenerator[str, None]
) -> AsyncIterator[str]:
    """The server-sent events of a streamed response, as OpenAI sends them."""
    # Closing `pieces` cancels the job, also when the client leaves while a chunk is sent.
    async with contextlib.aclosing(pieces):
        try:
            if opening := reply.kind.opening():
                yield reply.chunk(opening)
            if first:
                yield reply.chunk([reply.kind.delta(first, None)])
            async for piece in pieces:
                if piece:
                    yield reply.chunk([reply.kind.delta(piece, None)])
            yield reply.chunk([reply.kind.delta("", reply.text.finish_reason)])
            if reply.include_usage:
                yield reply.usage_chunk()
        except EngineFailed as e:
            # The 200 is sent: an error event is how OpenAI reports a failure mid-stream.
            error = _engine_error(e)
            yield _event(error_body(error.message, "server_error", None, None))
    yield "data: [DONE]\n\n"


def _engine_error(e: EngineFailed) -> ApiError:
    return ApiError(500, f"The engine failed while generating ({e}); please retry.")


async def _generate(
    request: Request,
    body: GenerationRequest,
    prompt: list[int],
    kind: type,
    stop_id: int,
    tool: Calculator | None = None,
) -> Response:
    service: ModelService = request.app.state.service
    prompt_param = "messages" if kind is ChatKind else "prompt"
    sampling = service.sampling(body, len(prompt), prompt_param)
    reply = Reply(
        kind=kind,
        model=service.model_id,
        job=service.worker.submit(prompt, sampling, {stop_id}, tool),
        text=ReplyText(service.tokenizer, body.stop or ()),
        prompt_tokens=len(prompt),
        include_usage=body.include_usage(),
    )
    return await _respond(request, reply, bool(body.stream))


# --- routes ----------------------------------------------------------------------------


async def chat_completions(body: ChatRequest, request: Request) -> Response:
    service: ModelService = request.app.state.service
    service.check_model(body.model)
    last = len(body.messages) - 1
    if body.messages[last].role != "user":
        message = "The last message must be a user message: the model answers it."
        raise ApiError(400, message, param=f"messages.{last}.role")
    messages = [m.for_template() for m in body.messages]
    prompt = render_prompt(messages, service.tokenizer)
    # A reply ends at the end-of-turn token, as in `xinslm chat`.
    end_id = service.tokenizer.end_id
    return await _generate(request, body, prompt, ChatKind, end_id, service.calculator)


async def completions(body: CompletionRequest, request: Request) -> Response:
    service: ModelService = request.app.state.service
    service.check_model(body.model)
    tokenizer = service.tokenizer
    prompt = [tokenizer.bos_id, *tokenizer.encode(body.prompt)]
    # A document starts with BOS, so the next BOS ends it (as in `xinslm sample`).
    return await _generate(request, body, prompt, TextKind, tokenizer.bos_id)


async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [request.app.state.service.model_card()]}


async def get_model(model: str, request: Request) -> dict:
    service: ModelService = request.app.state.service
    service.check_model(model)
    return service.model_card()


async def health() -> dict:
    return {"status": "ok"}


async def page() -> Response:
    if not PAGE.is_file():
        raise ApiError(404, f"The chat page is missing ({PAGE}).")
    return FileResponse(PAGE, media_type="text/html")


# --- errors ----------------------------------------------------------------------------


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    # pydantic's 422 becomes OpenAI's 400, naming the first wrong field.
    message, param, code = validation_message(exc.errors()[0])
    return ApiError(400, message, param, code).response()


async def _http_error(request: Request, exc: HTTPException) -> Response:
    where = f"{request.method} {request.url.path}"
    messages = {404: f"Invalid URL ({where}).", 405: f"Method not allowed ({where})."}
    message = messages.get(exc.status_code, str(exc.detail))
    return ApiError(exc.status_code, message).response(exc.headers)


async def _bad_input(request: Request, exc: XinslmError) -> Response:
    return ApiError(400, str(exc)).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback after this answer; the server goes on serving.
    return ApiError(500, f"Internal server error ({type(exc).__name__}).").response()


# --- middleware ------------------------------------------------------------------------


class ApiKeyCheck:
    """Every /v1 request needs `Authorization: Bearer <key>` (the page and /health do not)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            problem = self._problem(dict(scope["headers"]).get(b"authorization"))
            if problem:
                error = ApiError(401, problem, code="invalid_api_key")
                await error.response({"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, header: bytes | None) -> str | None:
        if not header:
            return (
                "You didn't provide an API key: send it as 'Authorization: Bearer YOUR_KEY' "
                f"(the key given to xinslm serve --api-key or {API_KEY_ENV})."
            )
        scheme, _, key = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.key):
            return "Incorrect API key provided."
        return None


class BodyLimit:
    """A 413 for a body over `limit` bytes, by its Content-Length or, sent in chunks, as it
    comes. The body is read whole here (it is small) and replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        body = None if int(declared or 0) > self.limit else await self._read(receive)
        if body is None:
            message = f"The request body is over the limit of {self.limit} bytes."
            await ApiError(413, message, code="request_too_large").response()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app sees the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: the disconnect, when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# --- the app ---------------------------------------------------------------------------


def create_app(settings: ServeSettings) -> FastAPI:
    """The server's app: the checkpoint loaded on settings.device, its engine thread started
    when the app starts and stopped when it stops."""
    service = ModelService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.worker.start()
        try:
            yield
        finally:
            service.worker.stop()

    # No /docs, /redoc or /openapi.json: the API is OpenAI's, documented there.
    app = FastAPI(
        title="xinslm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.service = service
    _add_routes(app)
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyCheck, key=settings.api_key)  # outermost: before the body
    return app


def _add_routes(app: FastAPI) -> None:
    app.post("/v1/chat/completions", response_model=None)(chat_completions)
    app.post("/v1/completions", response_model=None)(completions)
    app.get("/v1/models")(list_models)
    app.get("/v1/models/{model}")(get_model)
    app.get("/health")(health)
    app.get("/", include_in_schema=False, response_model=None)(page)


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(XinslmError, _bad_input)
    app.add_exception_handler(Exception, _unexpected)


def run_server(settings: ServeSettings, host: str, port: int) -> None:
    """Serve until Ctrl-C, printing where (the CLI's `xinslm serve`)."""
    import uvicorn

    app = create_app(settings)
    with _listen(host, port) as sock:
        base = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
        service: ModelService = app.state.service
        key = " (API key required)" if settings.api_key else ""
        print(f"xinslm serve: {settings.checkpoint} on {service.device}", file=sys.stderr)
        print(f"  chat page  {base}/", file=sys.stderr)
        print(f"  API        {base}/v1{key}", file=sys.stderr)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@contextlib.contextmanager
def serving(settings: ServeSettings, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The server in a background thread of this process (tests, benchmarks, a notebook),
    on a free port unless one is named: yields its base URL, stops it on exit."""
    import uvicorn

    app = create_app(settings)
    # Bound before the thread starts: the port is known and already taken, no race.
    with _listen(host, port) as sock:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start (see the log above)")
                time.sleep(0.01)
            yield f"http://{_url_host(host)}:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@contextlib.contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    """The listening socket, bound here so that a taken port is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise XinslmError(f"cannot listen on {host}:{port}: {reason}") from None
    with sock:
        yield sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"[{host}]" if ":" in host else host
