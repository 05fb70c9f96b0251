"""Export to a Hugging Face model folder: transformers loads it as the same network (logits,
greedy tokens through its own generate() and KV cache), for GQA, MHA and MQA; the folder holds
exactly its four files and is written atomically."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")  # export's one dependency beyond torch

from conftest import dot_entries, save_model_checkpoint  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from test_generate import context_model  # noqa: E402

from xinslm import cli  # noqa: E402
from xinslm.checkpoint import load_checkpoint  # noqa: E402
from xinslm.export import export_model  # noqa: E402
from xinslm.generate import generate  # noqa: E402
from xinslm.sampling import Sampling  # noqa: E402
from xinslm.tokenizer import ByteTokenizer  # noqa: E402

SHAPE = dict(vocab_size=265, context_len=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
FILES = {"config.json", "model.safetensors", "configuration_xinslm.py", "modeling_xinslm.py"}
HF_CODE = Path(__file__).resolve().parents[1] / "xinslm" / "hf"
BOS, END = (ByteTokenizer().special[t] for t in ("<|bos|>", "<|end|>"))
PROMPT = [BOS, 72, 101, 108, 108, 111, 44, 32, 119, 111]  # BOS "Hello, wo"


def export(tmp: Path, seed: int = 3, **overrides: int):
    """(model, folder): a random context-dependent model, saved as a checkpoint the way the
    project saves one, loaded back and exported."""
    model = context_model(seed=seed, **{**SHAPE, **overrides})
    checkpoint = load_checkpoint(save_model_checkpoint(tmp / "model.pt", model))
    export_model(checkpoint, tmp / "hf")
    return model, tmp / "hf"


@pytest.fixture(scope="module", params=[2, 4, 1], ids=["gqa", "mha", "mqa"])
def exported(request, tmp_path_factory):
    """(our model, the transformers model loaded from its export), once per n_kv_head."""
    transformers = pytest.importorskip("transformers")
    model, folder = export(tmp_path_factory.mktemp("export"), n_kv_head=request.param)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.float32
    )
    return model, hf.eval()


def greedy(model, prompt: list[int], n: int = 32, stop_id: int | None = END) -> list[int]:
    return list(generate(model, prompt, Sampling(max_new_tokens=n, temperature=0), stop_id))


def hf_greedy(hf, prompt: list[int], n: int = 32) -> list[int]:
    """HF generate()'s new tokens, up to its stop (<|end|>, the config's eos) not included."""
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    new = out[0, len(prompt) :].tolist()
    return new[: new.index(END)] if END in new else new


# --- the folder ---------------------------------------------------------------------------


def test_export_writes_the_four_files_with_our_weights_and_config(tmp_path):
    model, folder = export(tmp_path)
    assert {p.name for p in folder.iterdir()} == FILES
    assert dot_entries(tmp_path) == []  # no temporary folder left beside it
    weights = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert weights.keys() == state.keys()
    for name, tensor in state.items():
        assert weights[name].dtype == torch.float32
        assert torch.equal(weights[name], tensor), name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["XinslmForCausalLM"]
    assert config["model_type"] == "xinslm"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_xinslm.XinslmConfig",
        "AutoModelForCausalLM": "modeling_xinslm.XinslmForCausalLM",
    }
    assert (config["bos_token_id"], config["eos_token_id"]) == (BOS, END)
    assert config["dtype"] == config["torch_dtype"] == "float32"
    assert {k: config[k] for k in model.config.to_dict()} == model.config.to_dict()
    for name in ("configuration_xinslm.py", "modeling_xinslm.py"):
        assert (folder / name).read_bytes() == (HF_CODE / name).read_bytes()


def test_export_replaces_a_folder_whole_and_a_failure_leaves_the_old_one(tmp_path):
    model, folder = export(tmp_path)
    (folder / "stale.txt").write_text("from an earlier export")
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    export_model(checkpoint, folder)
    assert {p.name for p in folder.iterdir()} == FILES
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    broken = {**checkpoint, "model": {**checkpoint["model"], "lm_head.weight": "not a tensor"}}
    with pytest.raises(AttributeError):
        export_model(broken, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert dot_entries(tmp_path) == []


def imported_roots(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file ("." for relative ones)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else node.module.split(".")[0])
    return roots


def test_exported_code_needs_only_torch_and_transformers_and_export_no_transformers():
    allowed = {"__future__", "math", "typing", "torch", "transformers", "."}  # "." : each other
    for name in ("configuration_xinslm.py", "modeling_xinslm.py"):
        assert imported_roots(HF_CODE / name) <= allowed, name
    assert "transformers" not in imported_roots(HF_CODE.parent / "export.py")


# --- transformers loads the same network --------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("batch,length", [(1, 1), (3, 7), (2, 64)])
def test_hf_logits_equal_ours(exported, batch, length):
    model, hf = exported
    assert type(hf).__name__ == "XinslmForCausalLM"
    ids = torch.randint(0, SHAPE["vocab_size"], (batch, length), generator=torch.manual_seed(1))
    want, _ = model(ids)
    got = hf(ids).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # transformers' labels are the inputs themselves: the model shifts them.
    if length > 1:
        _, loss = model(ids[:, :-1], targets=ids[:, 1:])
        torch.testing.assert_close(hf(ids, labels=ids).loss, loss, atol=1e-5, rtol=0)


@torch.no_grad()
def test_hf_greedy_generate_with_its_kv_cache_equals_ours(exported):
    model, hf = exported
    steps = []  # (tokens fed, cache type) of each forward pass generate() makes
    hook = hf.register_forward_pre_hook(
        lambda _, args, kwargs: steps.append(
            (kwargs["input_ids"].shape[1], type(kwargs.get("cache")).__name__)
        ),
        with_kwargs=True,
    )
    try:
        got = hf_greedy(hf, PROMPT)
    finally:
        hook.remove()
    want = greedy(model, PROMPT)
    assert len(want) == 32 and len(set(want)) > 3, "degenerate: the comparison proves little"
    assert got == want
    # The prompt once, then one token per step through transformers' own cache.
    assert steps == [(len(PROMPT), "DynamicCache")] + [(1, "DynamicCache")] * 31


@torch.no_grad()
def test_hf_cache_fed_in_chunks_equals_the_full_forward(exported):
    """A chunk after cached tokens takes the explicit causal mask (generate() only prefills
    and then feeds single tokens)."""
    from transformers import DynamicCache

    model, hf = exported
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 40), generator=torch.manual_seed(2))
    want, _ = model(ids)
    cache = DynamicCache()
    pieces = [hf(ids[:, a:b], cache=cache).logits for a, b in [(0, 10), (10, 25), (25, 26)]]
    assert cache.get_seq_length() == 26
    torch.testing.assert_close(torch.cat(pieces, 1), want[:, :26], atol=1e-5, rtol=0)


@torch.no_grad()
def test_hf_padded_batch_generates_each_prompt_as_alone(exported):
    """Left padding (as generate() batches prompts) and right padding hide the pad tokens."""
    model, hf = exported
    prompts = [PROMPT, [BOS, 87, 104, 121], [BOS, *range(40, 46)]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    for row, prompt in zip(out[:, width:].tolist(), prompts, strict=True):
        want = greedy(model, prompt, n=16)
        assert row[: len(want)] == want
    right = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    logits = hf(right, attention_mask=mask.flip(1)).logits
    for i, prompt in enumerate(prompts):
        want, _ = model(torch.tensor([prompt]))
        torch.testing.assert_close(logits[i, : len(prompt)], want[0], atol=1e-5, rtol=0)


def test_xinslm_export_command(tmp_path, capsys):
    checkpoint = save_model_checkpoint(tmp_path / "chat.pt", context_model(seed=1, **SHAPE))
    cli.main(["export", str(checkpoint), str(tmp_path / "out")])
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json"}  # test_export_tokenizer.py
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == FILES | tokenizer_files | {"README.md"}
    card = (tmp_path / "out/README.md").read_text()
    assert "library_name: transformers" in card and "| stage, steps | None, 0 |" in card
    assert capsys.readouterr().out.startswith(f"exported {checkpoint} -> {tmp_path / 'out'}")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "other")])
    assert exit_info.value.code == 1 and not (tmp_path / "other").exists()
    assert "missing.pt" in capsys.readouterr().err
