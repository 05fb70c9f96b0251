"""Float8 training of the large linear layers (the `fp8` param of pretrain and sft).

Through torchao's float8 training (an optional dependency: pip install 'xinslm[fp8]'): each
linear layer big enough to gain (dims divisible by 16, none below 128, as nanochat filters
them) multiplies in float8 with dynamic tensorwise scales, forward and backward; weights,
gradients and optimizer states stay as they were, so checkpoints do not change. On one H100
it pays from about 1280 wide: +9% tokens/s for d20, -4% for d12, where the casts cost more
than the faster matmuls save (bench/RESULTS.md). q, k and v stay bf16: the model projects
them with one matmul of the concatenated weights, which pays more at every width.
"""

from __future__ import annotations

import torch

from xinslm.errors import XinslmError


def check_fp8(device: torch.device) -> None:
    """A clear error, before any work, where float8 training cannot run."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise XinslmError(
            f"fp8: float8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer "
            f"(H100, H200, L4, RTX 4090), not {device}; set fp8: false"
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise XinslmError("fp8: needs torchao (pip install 'xinslm[fp8]'); set fp8: false") from e


QKV = ("attn.c_q", "attn.c_k", "attn.c_v")  # read as one concatenated bf16 matrix, not called


def converts(module: torch.nn.Module, name: str) -> bool:
    """Whether the linear layer `name` trains in float8."""
    dims = (module.in_features, module.out_features)
    return all(d % 16 == 0 for d in dims) and min(dims) >= 128 and not name.endswith(QKV)


def to_float8(model: torch.nn.Module, recipe: str = "tensorwise") -> None:
    """Swap model's big linear layers for torchao's Float8Linear, in place (before compiling
    and before the optimizers are made: the parameters stay the same tensors)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)
    convert_to_float8_training(model, config=config, module_filter_fn=converts)
