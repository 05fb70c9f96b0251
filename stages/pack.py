"""Stage pack: data/tokens -> data/blocks: [N, context_len + 1] blocks of each split, described
by meta.json and read from data/tokens (xinslm.blocks), not copied."""

from xinslm.config import load_params
from xinslm.errors import run_main
from xinslm.pack import pack_blocks

IN, OUT = "data/tokens", "data/blocks"


def main() -> None:
    (model,) = load_params("params.yaml", "model")
    meta = pack_blocks(IN, OUT, model.context_len)
    stats = meta["stats"]
    print(
        f"pack: {stats['train']['blocks']:,} train and {stats['val']['blocks']:,} val blocks "
        f"of {model.context_len + 1} tokens -> {OUT}"
    )


if __name__ == "__main__":
    run_main(main)
