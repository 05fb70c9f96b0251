"""Stage tokenize-text: the shards of text.input -> data/tokens (each shard's token ids per
split + meta.json), tokenizing only the shards data/token-store does not hold yet."""

from xinslm.config import load_params
from xinslm.errors import run_main
from xinslm.tokenize_text import tokenize_text
from xinslm.tokenizer import get_tokenizer

OUT, STORE = "data/tokens", "data/token-store"  # the store: outside DVC's outs, git-ignored


def names(shards: list[str], most: int = 5) -> str:
    shown = ", ".join(shards[:most])
    return f" ({shown}{f', ... {len(shards) - most} more' if len(shards) > most else ''})"


def main() -> None:
    tok, text = load_params("params.yaml", "tokenizer", "text")
    tokenizer = get_tokenizer(tok.name, tok.encodings_dir)
    done = tokenize_text(text, tokenizer, OUT, STORE)
    meta, n = done.meta, done.meta["tokens"]
    print(
        f"tokenize-text: {len(meta['shards'])} shard(s): tokenized {len(done.tokenized)}"
        f"{names(done.tokenized) if done.tokenized else ''}, reused {len(done.reused)}, "
        f"dropped {done.dropped} unused from {STORE}"
    )
    print(
        f"tokenize-text: {meta['documents']['train']:,} train and {meta['documents']['val']:,} "
        f"val documents, {n['train']:,} train and {n['val']:,} val tokens ({tokenizer.name}, "
        f"vocab {tokenizer.vocab_size:,}, {meta['bytes_per_token']['val']} bytes/token on val) "
        f"-> {OUT}"
    )


if __name__ == "__main__":
    run_main(main)
