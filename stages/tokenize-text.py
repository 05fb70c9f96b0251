"""Stage tokenize-text: text files -> data/tokens/{train,val}.bin token streams + meta.json."""

from xinslm.config import load_params
from xinslm.errors import run_main
from xinslm.tokenize_text import tokenize_text
from xinslm.tokenizer import get_tokenizer

OUT = "data/tokens"


def main() -> None:
    tok, text = load_params("params.yaml", "tokenizer", "text")
    tokenizer = get_tokenizer(tok.name, tok.encodings_dir)
    meta = tokenize_text(
        text.input, tokenizer, OUT, text.val_fraction, text.chunk_bytes, text.utf8_errors
    )
    n = {s: a["shape"][0] for s, a in meta["arrays"].items()}
    print(
        f"tokenize-text: {len(meta['sources'])} file(s), {n['train']:,} train and {n['val']:,} "
        f"val tokens ({tokenizer.name}, vocab {tokenizer.vocab_size:,}, "
        f"{meta['bytes_per_token']['val']} bytes/token on val) -> {OUT}"
    )


if __name__ == "__main__":
    run_main(main)
