"""Export a checkpoint's model as a Hugging Face model folder.

The folder loads with `transformers.AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` as the same network, and works with transformers' `generate()`:
- config.json: the checkpoint's ModelConfig fields, the special token ids, and `auto_map`,
  which tells transformers to build the model from the two code files beside it;
- model.safetensors: the weights in float32 under NanoChatModel's own parameter names
  (safetensors holds plain tensors: loading it runs no code, unlike a pickle);
- configuration_xinslm.py and modeling_xinslm.py: copies of xinslm/hf/, which import only
  torch and transformers, so the folder needs no xinslm installed;
- tokenizer.json and tokenizer_config.json (export_tokenizer.py), given the tokenizer;
- README.md, the model card (model_card), given one.
Nothing here imports transformers: exporting needs only safetensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from xinslm.atomic import atomic_dir
from xinslm.export_tokenizer import tokenizer_config, tokenizer_json
from xinslm.model import ModelConfig
from xinslm.tokenizer import Tokenizer

HF_CODE = Path(__file__).parent / "hf"
CODE_FILES = ("configuration_xinslm.py", "modeling_xinslm.py")


def hf_config(checkpoint: dict) -> dict:
    """config.json's contents for a checkpoint (as load_checkpoint returns it)."""
    fields = ModelConfig(**checkpoint["model_config"]).to_dict()  # refuses unknown fields
    special = checkpoint["tokenizer"]["special"]
    return {
        "architectures": ["XinslmForCausalLM"],
        "model_type": "xinslm",
        "auto_map": {
            "AutoConfig": "configuration_xinslm.XinslmConfig",
            "AutoModelForCausalLM": "modeling_xinslm.XinslmForCausalLM",
        },
        **fields,
        "bos_token_id": special["<|bos|>"],
        # A chat reply ends with <|end|>, so generate() stops there.
        "eos_token_id": special["<|end|>"],
        "tie_word_embeddings": False,
        "use_cache": True,
        # transformers 5 reads "dtype", older versions "torch_dtype".
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def hf_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as safetensors wants them: float32, contiguous, each its own
    memory (safetensors refuses tensors that share storage), on the CPU."""
    return {
        name: tensor.detach().to("cpu", torch.float32).contiguous().clone()
        for name, tensor in checkpoint["model"].items()
    }


def model_card(checkpoint: dict, chat_meta: dict | None = None) -> str:
    """README.md of the folder: what the model is, how it was trained, its losses, how to load
    it. Its numbers come from the checkpoint (and render-chat's meta): evaluation metrics are
    left out, so a change of eval settings does not change the export."""
    config, params = checkpoint["model_config"], checkpoint.get("train_params") or {}
    parameters = sum(t.numel() for t in checkpoint["model"].values())
    lines = [
        "---",
        "library_name: transformers",
        "tags: [xinslm, text-generation]",
        "---",
        f"# xinslm {checkpoint.get('stage', 'model')} model",
        "",
        f"A {parameters:,}-parameter decoder-only Transformer trained with "
        "xinslm ({n_layer} layers, width {n_embd}, {n_head} heads, "
        "{n_kv_head} key/value heads, context {context_len}), tokenizer "
        f"`{checkpoint['tokenizer']['name']}`.".format(**config),
        "",
        "| | |",
        "| --- | --- |",
        f"| stage, steps | {checkpoint.get('stage')}, {checkpoint.get('step')} |",
    ]
    for key in ("optimizer", "lr", "batch_size", "grad_accum"):
        if key in params:
            lines.append(f"| {key} | {params[key]} |")
    for key, value in (checkpoint.get("summary") or {}).items():
        lines.append(
            f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
        )
    if chat_meta is not None:
        sources, counts = chat_meta.get("sources", {}), chat_meta.get("conversations", {})
        for split in ("train", "val"):
            lines.append(
                f"| chat {split} data | {sources.get(split)} ({counts.get(split)} conversations) |"
            )
    lines += [
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'folder = "export/hf"  # this folder, or its repo id on the Hub',
        "model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)",
        "tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)",
        "```",
        "",
        "Use `apply_chat_template(..., sanitize_control_tokens=True)`: the chat template's special "
        "tokens then cannot be forged by message text. transformers' `generate()` does not run "
        "the calculator tool the model may call (`<|calc_start|>...<|calc_end|>`).",
        "",
    ]
    return "\n".join(lines)


def export_model(
    checkpoint: dict, out_dir: Path, tokenizer: Tokenizer | None = None, card: str | None = None
) -> None:
    """Write the checkpoint's model as a Hugging Face model folder at out_dir, replacing any
    folder there whole: it is built beside out_dir and renamed into place, so a failure
    leaves nothing half-written. With the checkpoint's tokenizer, also tokenizer.json and
    tokenizer_config.json (with the chat template); with a card, README.md."""
    config = hf_config(checkpoint)
    weights = hf_state_dict(checkpoint)
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        for name in CODE_FILES:
            shutil.copyfile(HF_CODE / name, tmp / name)
        if tokenizer is not None:
            files = {
                "tokenizer.json": tokenizer_json(tokenizer),
                "tokenizer_config.json": tokenizer_config(config["context_len"]),
            }
            for name, content in files.items():
                (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
