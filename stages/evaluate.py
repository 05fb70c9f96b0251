"""Stage evaluate: base.pt and chat.pt on held-out data -> eval/metrics.json, eval/samples.json.

Metrics: bits per byte and loss of both models on the held-out text (what SFT cost the base
skill shows as the difference), and the chat model's loss on held-out assistant turns.
"""

import json
from dataclasses import asdict

from xinslm.artifact import read_meta
from xinslm.atomic import write_json
from xinslm.batches import ChatData
from xinslm.blocks import open_blocks
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.config import load_params
from xinslm.device import pick_device
from xinslm.engine import Engine
from xinslm.errors import XinslmError, run_main
from xinslm.generate import chat_replies, continuations
from xinslm.losses import assistant_loss, read_token_bytes, text_loss_and_bpb
from xinslm.sampling import Sampling
from xinslm.tokenizer import tokenizer_for
from xinslm.tool_calls import Calculator

BASE, CHAT, BLOCKS, CHATS = "checkpoints/base.pt", "checkpoints/chat.pt", "data/blocks", "data/chat"
METRICS, SAMPLES = "eval/metrics.json", "eval/samples.json"


def main() -> None:
    tok_p, ev = load_params("params.yaml", "tokenizer", "eval")
    device = pick_device(ev.device)
    base = load_checkpoint(BASE)
    chat = load_checkpoint(CHAT, tokenizer=base["tokenizer"])
    tokenizer = tokenizer_for(base["tokenizer"], BASE, tok_p.encodings_dir)
    blocks_meta = read_meta(BLOCKS, "blocks", base["tokenizer"])
    val_blocks = open_blocks(BLOCKS, blocks_meta, "val")
    val_chats = ChatData(CHATS, "val", base["tokenizer"])
    if len(val_blocks) == 0 or len(val_chats) == 0:
        raise XinslmError("no held-out data: set text.val_fraction > 0 and a chat.val_input")
    # Each id's bytes as tokenize-text recorded them: pretrain's val bpb reads the same table.
    token_bytes = read_token_bytes(BLOCKS, blocks_meta)
    sampling = Sampling(
        max_new_tokens=ev.max_new_tokens,
        temperature=ev.temperature,
        top_k=ev.top_k,
        top_p=ev.top_p,
        seed=ev.seed,
    )

    metrics, samples = {}, {"settings": asdict(sampling), "chat": [], "base": []}
    for name, ckpt in (("base", base), ("chat", chat)):
        model = model_from_checkpoint(ckpt).to(device)
        text = text_loss_and_bpb(model, val_blocks, token_bytes, ev.batch_size, device)
        metrics[name] = {"val_bpb": text["val_bpb"], "val_loss": text["val_loss"]}
        if name == "base":
            metrics["tokenizer"] = {"val_bytes_per_token": text["bytes"] / text["tokens"]}
            engine = Engine(model, max_batch=len(ev.base_prompts) or 1)
            replies = continuations(engine, tokenizer, ev.base_prompts, sampling)
            samples["base"] = [
                {"prompt": p, "continuation": r}
                for p, r in zip(ev.base_prompts, replies, strict=True)
            ]
        else:
            metrics[name]["assistant_val_loss"] = assistant_loss(
                model, val_chats, ev.batch_size, device
            )
            conversations = [[{"role": "user", "content": p}] for p in ev.prompts]
            engine = Engine(model, max_batch=len(ev.prompts) or 1)
            tool = Calculator(tokenizer) if ev.tool else None
            replies = chat_replies(engine, tokenizer, conversations, sampling, tool)
            samples["chat"] = [
                {"prompt": p, "reply": r} for p, r in zip(ev.prompts, replies, strict=True)
            ]

    write_json(METRICS, metrics)
    write_json(SAMPLES, samples)
    print(f"evaluate: {json.dumps(metrics)}")
    for s in samples["chat"]:
        print(f"  user: {s['prompt']!r} -> assistant: {s['reply']!r}")


if __name__ == "__main__":
    run_main(main)
