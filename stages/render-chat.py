"""Stage render-chat: train and val chat JSONL -> data/chat ids, label mask, offsets, meta."""

from xinslm.config import load_params
from xinslm.errors import run_main
from xinslm.render_chat import render_chat
from xinslm.tokenizer import get_tokenizer

OUT = "data/chat"


def main() -> None:
    tok, model, chat = load_params("params.yaml", "tokenizer", "model", "chat")
    tokenizer = get_tokenizer(tok.name, tok.encodings_dir)
    meta = render_chat(chat, tokenizer, OUT, model.context_len)
    n = meta["conversations"]
    print(
        f"render-chat: {n['train']:,} train and {n['val']:,} val conversations -> {OUT} "
        f"({meta['skipped']} skipped, {meta['truncated']} truncated, {meta['dropped']} dropped)"
    )
    for path, dropped in meta["decontaminated"].items():
        print(f"  decontaminated: {dropped['dropped']} conversations hold a question of {path}")
    for problem in meta["skipped_records"][:5]:
        print(f"  skipped {problem}")


if __name__ == "__main__":
    run_main(main)
