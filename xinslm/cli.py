"""The `xinslm` command: chat with the trained model, continue text, look inside a checkpoint.

xinslm chat                      interactive multi-turn chat (checkpoints/chat.pt)
xinslm chat -p "Hi!"             answer one message and exit
xinslm sample --prompt "Once"    continue text with the base model (checkpoints/base.pt)
xinslm info checkpoints/chat.pt  config, step, tokenizer and losses of a checkpoint
xinslm serve                     an OpenAI-compatible API and a chat page on 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xinslm.errors import XinslmError, run_main

HELP_LINE = "/reset clears the conversation, /exit (or Ctrl-D) quits"


def _load(args: argparse.Namespace):
    """The checkpoint, an engine over its model on args.device, and its tokenizer."""
    from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
    from xinslm.device import pick_device
    from xinslm.engine import Engine
    from xinslm.tokenizer import tokenizer_for

    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt).to(pick_device(args.device))
    tokenizer = tokenizer_for(ckpt["tokenizer"], args.checkpoint, args.encodings_dir)
    return ckpt, Engine(model, max_batch=1), tokenizer


class UsageError(XinslmError):
    """A command line that cannot be used (a bad setting or argument): one line and exit 2,
    argparse's code for its own usage errors (run_main reads exit_code)."""

    exit_code = 2


def _sampling(args: argparse.Namespace):
    """The flags' Sampling, checked before anything loads; a bad one names its flag."""
    from xinslm.config import SamplingError
    from xinslm.sampling import Sampling

    try:
        return Sampling(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    except SamplingError as e:
        raise UsageError(f"--{e.setting.replace('_', '-')}: {e.problem}") from None


def _text_streams() -> None:
    """A typed line that is not UTF-8 reaches _utf8 (not a UnicodeDecodeError), and a character
    the terminal's encoding lacks prints as '?' (not a UnicodeEncodeError)."""
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "replace")):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=errors)


def _utf8(text: str, where: str) -> str:
    """`text` if it is UTF-8; else UsageError naming `where`. Python reads argv (and stdin,
    see _text_streams) with surrogateescape: a byte that is not UTF-8 is a lone surrogate."""
    from xinslm.text import not_utf8

    problem = not_utf8(text, from_bytes=True)
    if problem is not None:
        raise UsageError(f"{where} is not UTF-8: {problem}; is the terminal set to UTF-8?")
    return text


def _stream(engine, tokenizer, prompt_ids: list[int], args, stop_id: int, tool=None) -> str:
    """Generate after prompt_ids, printing text as it comes; return the reply's text (without
    special tokens, even with --raw: it goes back into the conversation). With a tool (the
    calculator), the model's calls are answered."""
    from xinslm.reply_text import ReplyText, shown_text

    # Holds back a multi-byte character cut between tokens; hides special tokens unless --raw.
    reply = ReplyText(tokenizer, raw=args.raw)
    for token in engine.generate(prompt_ids, _sampling(args), {stop_id}, tool):
        sys.stdout.write(reply.add([token]))
        sys.stdout.flush()
    sys.stdout.write(reply.finish("stop") + "\n")
    sys.stdout.flush()
    return shown_text(tokenizer, reply.tokens)


def _fit_history(conversation: list[dict], tokenizer, context_len: int, room: int) -> list[dict]:
    """Drop the oldest exchanges (keeping a system message) until the prompt leaves `room`
    tokens for the reply."""
    from xinslm.chat_template import render_prompt

    while len(render_prompt(conversation, tokenizer)) > context_len - room:
        first = 1 if conversation[0]["role"] == "system" else 0
        if len(conversation) - first <= 1:
            raise XinslmError(f"the message does not fit the model's context ({context_len})")
        del conversation[first : first + 2]
        print("(dropped the oldest exchange to fit the context)", file=sys.stderr)
    return conversation


def _next_message() -> str | None:
    """The next non-empty line typed, stripped (None at the end of input); a line that is not
    UTF-8 is refused in one line and another asked for."""
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            print()
            return None
        try:
            if message:
                return _utf8(message, "the message")
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from xinslm.chat_template import render_prompt
    from xinslm.tool_calls import Calculator

    _sampling(args)  # a bad setting or argument is refused before the checkpoint loads
    _text_streams()
    system = [{"role": "system", "content": _utf8(args.system, "--system")}] if args.system else []
    if args.prompt is not None:
        _utf8(args.prompt, "--prompt")
    ckpt, engine, tokenizer = _load(args)
    calculator = Calculator(tokenizer)
    context_len = engine.config.context_len
    room = min(args.max_new_tokens, context_len // 2)
    if args.prompt is not None:
        conversation = _fit_history(
            [*system, {"role": "user", "content": args.prompt}], tokenizer, context_len, room
        )
        prompt = render_prompt(conversation, tokenizer)
        _stream(engine, tokenizer, prompt, args, tokenizer.end_id, calculator)
        return

    print(f"xinslm chat with {args.checkpoint} (step {ckpt['step']}); {HELP_LINE}")
    conversation = list(system)
    while (message := _next_message()) is not None:
        if message in ("/exit", "/quit"):
            return
        if message == "/reset":
            conversation = list(system)
            print("(conversation cleared)")
            continue
        conversation.append({"role": "user", "content": message})
        conversation = _fit_history(conversation, tokenizer, context_len, room)
        sys.stdout.write("assistant> ")
        prompt = render_prompt(conversation, tokenizer)
        reply = _stream(engine, tokenizer, prompt, args, tokenizer.end_id, calculator)
        conversation.append({"role": "assistant", "content": reply})


def cmd_sample(args: argparse.Namespace) -> None:
    _sampling(args)
    _text_streams()
    _utf8(args.prompt, "--prompt")
    _, engine, tokenizer = _load(args)
    prompt_ids = [tokenizer.bos_id, *tokenizer.encode(args.prompt)]
    sys.stdout.write(args.prompt)
    _stream(engine, tokenizer, prompt_ids, args, stop_id=tokenizer.bos_id)


def cmd_info(args: argparse.Namespace) -> None:
    from xinslm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    shown = {k: ckpt.get(k) for k in ("stage", "step", "model_config", "summary", "train_params")}
    shown["tokenizer"] = {k: ckpt["tokenizer"].get(k) for k in ("name", "vocab_size")}
    shown["parameters"] = sum(t.numel() for t in ckpt["model"].values())
    print(json.dumps(shown, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from xinslm.checkpoint import load_checkpoint
    from xinslm.export import export_model, model_card
    from xinslm.tokenizer import tokenizer_for

    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = tokenizer_for(ckpt["tokenizer"], args.checkpoint, args.encodings_dir)
    export_model(ckpt, Path(args.out_dir), tokenizer, model_card(ckpt))
    print(f"exported {args.checkpoint} -> {args.out_dir} (Hugging Face model folder)")


def cmd_serve(args: argparse.Namespace) -> None:
    from xinslm.serve import API_KEY_ENV, ServeSettings, run_server

    settings = ServeSettings(
        checkpoint=args.checkpoint,
        device=args.device,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch,
        encodings_dir=args.encodings_dir,
    )
    run_server(settings, args.host, args.port)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda when present, else cpu), cpu, cuda, cuda:N or mps",
    )
    _encodings_arg(p)


def _encodings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encodings-dir",
        default="../shared/data/tiktoken",
        help="folder of .tiktoken files (tiktoken tokenizers only)",
    )


def _sampling_args(p: argparse.ArgumentParser, default_checkpoint: str) -> None:
    p.add_argument("--checkpoint", default=default_checkpoint, help="checkpoint to load")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply at most")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--raw",
        action="store_true",
        help="show special tokens (<|bos|>, <|calc_start|>, ...) as they are, not hidden",
    )
    _device_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xinslm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser(
        "chat",
        help="chat with the SFT model",
        description=f"Chat with a model in the terminal; {HELP_LINE}. With -p, answer once.",
    )
    _sampling_args(chat, "checkpoints/chat.pt")
    chat.add_argument("-p", "--prompt", help="answer this one message and exit")
    chat.add_argument("--system", default="", help="a system message that opens the chat")
    chat.set_defaults(func=cmd_chat)

    sample = sub.add_parser(
        "sample", help="continue text with the base model", description="Continue a text prompt."
    )
    _sampling_args(sample, "checkpoints/base.pt")
    sample.add_argument("--prompt", default="", help="text to continue")
    sample.set_defaults(func=cmd_sample)

    info = sub.add_parser(
        "info", help="describe a checkpoint", description="Print a checkpoint's config and losses."
    )
    info.add_argument("checkpoint", help="e.g. checkpoints/chat.pt")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face model folder",
        description="Write CHECKPOINT's model as a folder that transformers loads with "
        "AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True) and "
        "AutoTokenizer.from_pretrained(OUT_DIR): config.json, model.safetensors, the modeling "
        "code, tokenizer.json and tokenizer_config.json with the chat template.",
    )
    export.add_argument("checkpoint", help="e.g. checkpoints/chat.pt (or base.pt)")
    export.add_argument("out_dir", help="the folder to write (replaced whole)")
    _encodings_arg(export)
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser(
        "serve",
        help="serve an OpenAI-compatible API and a chat page",
        description="Serve /v1/chat/completions, /v1/completions and /v1/models (as OpenAI's "
        "API) and a chat page at /, with concurrent requests batched on one engine.",
    )
    serve.add_argument("--checkpoint", default="checkpoints/chat.pt", help="checkpoint to serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1 requests (default: $XINSLM_API_KEY)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=8, help="sequences decoded together at most"
    )
    _device_args(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
