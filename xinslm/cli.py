"""The `xinslm` command: look inside a checkpoint, continue text, ask the chat model once."""

from __future__ import annotations

import argparse
import json
import sys

from xinslm.errors import XinslmError, run_main


def _load(path: str, encodings_dir: str):
    from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
    from xinslm.tokenizer import get_tokenizer

    ckpt = load_checkpoint(path)
    tokenizer = get_tokenizer(ckpt["tokenizer"]["name"], encodings_dir)
    if tokenizer.identity() != ckpt["tokenizer"]:
        raise XinslmError(f"{path}: its tokenizer does not match '{tokenizer.name}' as loaded now")
    return ckpt, model_from_checkpoint(ckpt), tokenizer


def cmd_info(args: argparse.Namespace) -> None:
    from xinslm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    shown = {k: ckpt.get(k) for k in ("stage", "step", "model_config", "summary", "train_params")}
    shown["tokenizer"] = {k: ckpt["tokenizer"][k] for k in ("name", "vocab_size")}
    shown["parameters"] = sum(t.numel() for t in ckpt["model"].values())
    print(json.dumps(shown, indent=2))


def _stream(model, tokenizer, prompt_ids: list[int], args, stop_id: int | None) -> None:
    from xinslm.generate import generate

    new: list[int] = []
    printed = ""
    for token in generate(
        model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.seed, stop_id
    ):
        new.append(token)
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text
    print()


def cmd_sample(args: argparse.Namespace) -> None:
    _, model, tokenizer = _load(args.checkpoint, args.encodings_dir)
    prompt_ids = [tokenizer.bos_id, *tokenizer.encode(args.prompt)]
    sys.stdout.write(args.prompt)
    _stream(model, tokenizer, prompt_ids, args, stop_id=tokenizer.bos_id)


def cmd_chat(args: argparse.Namespace) -> None:
    from xinslm.chat import render_prompt

    _, model, tokenizer = _load(args.checkpoint, args.encodings_dir)
    conversation = [{"role": "system", "content": args.system}] if args.system else []
    conversation.append({"role": "user", "content": args.prompt})
    _stream(model, tokenizer, render_prompt(conversation, tokenizer), args, tokenizer.end_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xinslm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a checkpoint's config, step, tokenizer and params")
    info.add_argument("checkpoint", help="e.g. checkpoints/base.pt")
    info.set_defaults(func=cmd_info)

    def sampling(p: argparse.ArgumentParser, default_checkpoint: str) -> None:
        p.add_argument("--checkpoint", default=default_checkpoint, help="checkpoint to load")
        p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
        p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
        p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest")
        p.add_argument("--seed", type=int, default=0, help="sampling seed")
        p.add_argument(
            "--encodings-dir",
            default="../shared/data/tiktoken",
            help="folder of .tiktoken files (tiktoken tokenizers only)",
        )

    sample = sub.add_parser("sample", help="continue a text prompt with a (base) model")
    sampling(sample, "checkpoints/base.pt")
    sample.add_argument("--prompt", default="", help="text to continue")
    sample.set_defaults(func=cmd_sample)

    chat = sub.add_parser("chat", help="answer one message with the chat model")
    sampling(chat, "checkpoints/chat.pt")
    chat.add_argument("-p", "--prompt", required=True, help="the user's message")
    chat.add_argument("--system", default="", help="an optional system message")
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
