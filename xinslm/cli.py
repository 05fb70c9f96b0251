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


def _stream(engine, tokenizer, prompt_ids: list[int], args, stop_id: int, tool=None) -> str:
    """Generate after prompt_ids, printing text as it comes; return all of it. With a tool
    (the calculator), the model's calls are answered."""
    from xinslm.reply_text import ReplyText
    from xinslm.sampling import Sampling

    reply = ReplyText(tokenizer)  # holds back a multi-byte character cut between tokens
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    for token in engine.generate(prompt_ids, sampling, {stop_id}, tool):
        sys.stdout.write(reply.add([token]))
        sys.stdout.flush()
    sys.stdout.write(reply.finish("stop") + "\n")
    sys.stdout.flush()
    return reply.text


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


def cmd_chat(args: argparse.Namespace) -> None:
    from xinslm.chat_template import render_prompt
    from xinslm.tool_calls import Calculator

    ckpt, engine, tokenizer = _load(args)
    calculator = Calculator(tokenizer)
    context_len = engine.config.context_len
    room = min(args.max_new_tokens, context_len // 2)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        conversation = _fit_history(
            [*system, {"role": "user", "content": args.prompt}], tokenizer, context_len, room
        )
        prompt = render_prompt(conversation, tokenizer)
        _stream(engine, tokenizer, prompt, args, tokenizer.end_id, calculator)
        return

    print(f"xinslm chat with {args.checkpoint} (step {ckpt['step']}); {HELP_LINE}")
    conversation = list(system)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return
        message = line.strip()
        if message in ("/exit", "/quit"):
            return
        if message == "/reset":
            conversation = list(system)
            print("(conversation cleared)")
            continue
        if not message:
            continue
        conversation.append({"role": "user", "content": message})
        conversation = _fit_history(conversation, tokenizer, context_len, room)
        sys.stdout.write("assistant> ")
        prompt = render_prompt(conversation, tokenizer)
        reply = _stream(engine, tokenizer, prompt, args, tokenizer.end_id, calculator)
        conversation.append({"role": "assistant", "content": reply})


def cmd_sample(args: argparse.Namespace) -> None:
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
