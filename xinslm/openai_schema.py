"""The OpenAI API's shapes as `xinslm serve` speaks them: the requests (pydantic checks each
field and names the wrong one), the response and stream-chunk objects, and the error JSON.

Fields of OpenAI's API that a small text-only model has no use for (logprobs, tools,
penalties, ...) are accepted and ignored, as vLLM does; `top_k` is vLLM's extension. The
sampling fields are typed strictly here (no "0.5" or true for a number) and their bounds are
checked where every caller checks them, by `Sampling` (serve.py turns its error into a 400).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, field_validator

from xinslm.text import not_utf8

# --- requests --------------------------------------------------------------------------


def _text_of_parts(content: object) -> object:
    """OpenAI also takes content as a list of parts; a text-only model reads their text."""
    if not isinstance(content, list):
        return content
    texts = [
        p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None for p in content
    ]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("only text parts ({'type': 'text', 'text': '...'}) are supported")
    return "".join(texts)


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _unicode(text: str) -> str:
    """JSON may escape a lone surrogate ("\\ud800"): valid JSON, not text (no UTF-8 for it)."""
    problem = not_utf8(text)
    if problem is not None:
        raise ValueError(f"{problem} is not valid Unicode")
    return text


# A string from the request that the model reads or the server echoes: valid Unicode.
Text = Annotated[str, AfterValidator(_unicode)]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Text, BeforeValidator(_text_of_parts)]

    def for_template(self) -> dict[str, str]:
        # "developer" is OpenAI's newer name for the system role.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.content}


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class GenerationRequest(BaseModel):
    """The fields both endpoints share. Null means the default, as in OpenAI's API."""

    model: Text | None = None
    max_tokens: int | None = Field(None, strict=True)  # None: the rest of the context
    temperature: float | None = Field(None, strict=True)
    top_p: float | None = Field(None, strict=True)
    top_k: int | None = Field(None, strict=True)
    stop: Annotated[
        Annotated[list[Annotated[Text, Field(min_length=1)]], Field(max_length=4)] | None,
        BeforeValidator(_as_list),
    ] = None
    seed: int | None = Field(None, strict=True)  # None: a random one
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported (ask again for another reply)")
        return n

    def wanted_tokens(self) -> tuple[str, int | None]:
        """The name and value of the field that caps the reply's length."""
        return "max_tokens", self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, strict=True)  # OpenAI's newer max_tokens

    def wanted_tokens(self) -> tuple[str, int | None]:
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: Text


# --- responses -------------------------------------------------------------------------


class ChatKind:
    """chat.completion objects: the reply is a message; a stream opens with the role."""

    id_prefix, object, chunk_object = "chatcmpl-", "chat.completion", "chat.completion.chunk"

    @staticmethod
    def choice(text: str, finish_reason: str | None) -> dict:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def delta(text: str, finish_reason: str | None) -> dict:
        delta = {"content": text} if text else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def opening() -> list[dict]:
        delta = {"role": "assistant", "content": ""}
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]


class TextKind:
    """text_completion objects: the continuation is text, in whole and in chunks alike."""

    id_prefix, object, chunk_object = "cmpl-", "text_completion", "text_completion"

    @staticmethod
    def choice(text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    delta = choice

    @staticmethod
    def opening() -> list[dict]:
        return []


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_message(error: dict) -> tuple[str, str | None, str | None]:
    """OpenAI's (message, param, code) for the first of pydantic's errors on a request."""
    loc = [str(part) for part in error["loc"][1:]]  # loc[0] is "body"
    if error["type"] == "json_invalid":
        reason = error.get("ctx", {}).get("error", "invalid JSON")
        return f"We could not parse the JSON body of your request: {reason}.", None, None
    if not loc:
        message = "The request body must be a JSON object (send Content-Type: application/json)"
        return message, None, None
    param = ".".join(loc)
    if error["type"] == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    message = error["msg"].removeprefix("Value error, ")
    shown = repr(error.get("input"))  # repr: a lone surrogate shows as its escape
    if isinstance(error.get("input"), (str, int, float, bool)) and len(shown) <= 100:
        message += f" (got {shown})"
    return f"Invalid '{param}': {message}.", param, "invalid_value"
