"""Stage export: checkpoints/chat.pt -> export/hf, a Hugging Face model folder (config.json,
model.safetensors, modeling code, tokenizer.json, tokenizer_config.json, README.md)."""

from pathlib import Path

from xinslm.artifact import read_meta
from xinslm.checkpoint import load_checkpoint
from xinslm.config import load_params
from xinslm.errors import run_main
from xinslm.export import export_model, model_card
from xinslm.tokenizer import tokenizer_for

CHAT, CHATS, OUT = "checkpoints/chat.pt", "data/chat", "export/hf"


def main() -> None:
    (tok_p,) = load_params("params.yaml", "tokenizer")
    ckpt = load_checkpoint(CHAT)
    tokenizer = tokenizer_for(ckpt["tokenizer"], CHAT, tok_p.encodings_dir)
    chat_meta = read_meta(CHATS, "chat", ckpt["tokenizer"])
    export_model(ckpt, Path(OUT), tokenizer, model_card(ckpt, chat_meta))
    print(f"export: {CHAT} -> {OUT} (AutoModelForCausalLM.from_pretrained, trust_remote_code)")


if __name__ == "__main__":
    run_main(main)
