"""Stage train-tokenizer: with tokenizer.name bpe, train a byte-level BPE on the training text
-> data/tokenizer/bpe.tiktoken + meta.json. With another tokenizer it writes only a note that
never changes, so nothing downstream reruns."""

from xinslm.bpe import train_bpe, training_text, write_unused
from xinslm.config import load_params
from xinslm.errors import run_main
from xinslm.tokenizer import BPE_DIR


def main() -> None:
    tok, text = load_params("params.yaml", "tokenizer", "text")
    if tok.name != "bpe":
        write_unused(BPE_DIR, tok.name)
        print(f"train-tokenizer: tokenizer.name is {tok.name}, nothing to train")
        return
    texts = training_text(text, tok.max_chars)
    meta = train_bpe(texts, tok.vocab_size, BPE_DIR)
    print(
        f"train-tokenizer: BPE of {meta['vocab_size']:,} tokens trained on "
        f"{meta['trained_on_chars']:,} characters -> {BPE_DIR}"
    )


if __name__ == "__main__":
    run_main(main)
