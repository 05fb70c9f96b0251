"""Stage evaluate: base.pt and chat.pt on held-out data -> eval/metrics.json, eval/samples.json.

Metrics: bits per byte and loss of both models on the held-out text (what SFT cost the base
skill shows as the difference), and the chat model's loss on held-out assistant turns.
"""

import json

import torch

from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.config import load_params
from xinslm.data import ChatData
from xinslm.errors import XinslmError, run_main
from xinslm.evaluate import assistant_loss, chat_reply, continuation, text_loss_and_bpb
from xinslm.tokenizer import tokenizer_for
from xinslm.tokens import atomic_file, open_array, read_meta
from xinslm.train import pick_device

BASE, CHAT, BLOCKS, CHATS = "checkpoints/base.pt", "checkpoints/chat.pt", "data/blocks", "data/chat"
METRICS, SAMPLES = "eval/metrics.json", "eval/samples.json"


def write_json(path: str, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    tok_p, ev = load_params("params.yaml", "tokenizer", "eval")
    device = pick_device(ev.device)
    base = load_checkpoint(BASE)
    chat = load_checkpoint(CHAT, tokenizer=base["tokenizer"])
    tokenizer = tokenizer_for(base["tokenizer"], BASE, tok_p.encodings_dir)
    val_blocks = open_array(BLOCKS, read_meta(BLOCKS, "blocks", base["tokenizer"]), "val")
    val_chats = ChatData(CHATS, "val", base["tokenizer"])
    if len(val_blocks) == 0 or len(val_chats) == 0:
        raise XinslmError("no held-out data: set text.val_fraction > 0 and a chat.val_input")
    token_bytes = torch.tensor(tokenizer.token_byte_lengths())
    sampling = dict(
        max_new_tokens=ev.max_new_tokens,
        temperature=ev.temperature,
        top_k=ev.top_k,
        top_p=ev.top_p,
        seed=ev.seed,
    )

    metrics, samples = {}, {"settings": sampling, "chat": [], "base": []}
    for name, ckpt in (("base", base), ("chat", chat)):
        model = model_from_checkpoint(ckpt).to(device)
        text = text_loss_and_bpb(model, val_blocks, token_bytes, ev.batch_size, device)
        metrics[name] = {"val_bpb": text["val_bpb"], "val_loss": text["val_loss"]}
        if name == "base":
            metrics["tokenizer"] = {"val_bytes_per_token": text["bytes"] / text["tokens"]}
            for prompt in ev.base_prompts:
                reply = continuation(model, tokenizer, prompt, **sampling)
                samples["base"].append({"prompt": prompt, "continuation": reply})
        else:
            metrics[name]["assistant_val_loss"] = assistant_loss(
                model, val_chats, ev.batch_size, device
            )
            for prompt in ev.prompts:
                reply = chat_reply(
                    model, tokenizer, [{"role": "user", "content": prompt}], **sampling
                )
                samples["chat"].append({"prompt": prompt, "reply": reply})

    write_json(METRICS, metrics)
    write_json(SAMPLES, samples)
    print(f"evaluate: {json.dumps(metrics)}")
    for s in samples["chat"]:
        print(f"  user: {s['prompt']!r} -> assistant: {s['reply']!r}")


if __name__ == "__main__":
    run_main(main)
