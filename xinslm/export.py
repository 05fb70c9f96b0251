"""Export a checkpoint's model as a Hugging Face model folder.

The folder loads with `transformers.AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` as the same network, and works with transformers' `generate()`:
- config.json: the checkpoint's ModelConfig fields, the special token ids, and `auto_map`,
  which tells transformers to build the model from the two code files beside it;
- model.safetensors: the weights in float32 under NanoChatModel's own parameter names
  (safetensors holds plain tensors: loading it runs no code, unlike a pickle);
- configuration_xinslm.py and modeling_xinslm.py: copies of xinslm/hf/, which import only
  torch and transformers, so the folder needs no xinslm installed;
- tokenizer.json and tokenizer_config.json (export_tokenizer.py), given the tokenizer.
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


def export_model(checkpoint: dict, out_dir: Path, tokenizer: Tokenizer | None = None) -> None:
    """Write the checkpoint's model as a Hugging Face model folder at out_dir, replacing any
    folder there whole: it is built beside out_dir and renamed into place, so a failure
    leaves nothing half-written. With the checkpoint's tokenizer, also tokenizer.json and
    tokenizer_config.json (with the chat template)."""
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
                "tokenizer_config.json": tokenizer_config(tokenizer, config["context_len"]),
            }
            for name, content in files.items():
                (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
