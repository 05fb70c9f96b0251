import os
import re
import shlex

import pytest
import torch
from conftest import dot_entries, tiny_config

from xinslm.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from xinslm.errors import XinslmError
from xinslm.model import NanoChatModel
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer().identity()


def tiny_model():
    torch.manual_seed(0)
    model = NanoChatModel(tiny_config(context_len=16, n_layer=1))
    with torch.no_grad():
        for p in model.parameters():  # so that every weight, even the zero-init ones, matters
            p.add_(torch.randn_like(p) * 0.1)
    return model


def save_tiny(path, model=None):
    model = model or tiny_model()
    save_checkpoint(
        path, model=model.state_dict(), model_config=model.config.to_dict(), tokenizer=BYTE, step=7
    )
    return model


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = save_tiny(path)
    ckpt = load_checkpoint(path, tokenizer=BYTE)
    assert ckpt["format"] == "xinslm-checkpoint-1"
    assert ckpt["step"] == 7
    assert ckpt["tokenizer"] == BYTE
    assert ckpt["model_config"] == model.config.to_dict()
    assert ckpt["model"].keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt["model"][name], tensor), name
    loaded = model_from_checkpoint(ckpt)
    ids = torch.randint(0, 261, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(XinslmError, match=re.escape(f"{path}: checkpoint not found")):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_tiny(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(XinslmError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: unreadable or truncated checkpoint (")
    assert "\n" not in str(e.value)


def test_junk_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(XinslmError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "junk", [b"\x80\x02junkjunk", b"this is not a checkpoint\n" * 20], ids=["binary", "text"]
)
def test_corrupt_pickle_stream(tmp_path, junk):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(junk)
    with pytest.raises(XinslmError, match=re.escape(f"{path}: ")):
        load_checkpoint(path)


def test_plain_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(XinslmError, match=re.escape(f"{path}: not an xinslm checkpoint")):
        load_checkpoint(path)


def test_tokenizer_mismatch_names_the_key(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_tiny(path)
    other = {**BYTE, "name": "gpt2"}
    problem = f"{path}: made with tokenizer name='byte', but 'gpt2' is expected"
    with pytest.raises(XinslmError, match=re.escape(problem)):
        load_checkpoint(path, tokenizer=other)
    other = {**BYTE, "special": {**BYTE["special"], "<|end|>": 999}}
    with pytest.raises(XinslmError, match=re.escape(f"{path}: made with tokenizer special=")):
        load_checkpoint(path, tokenizer=other)


def test_checkpoint_without_tokenizer_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model={}, model_config={})
    with pytest.raises(XinslmError, match=re.escape(f"{path}: ")):
        load_checkpoint(path, tokenizer=BYTE)


class Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    payload = Exploit(f"touch {shlex.quote(str(marker))}")
    torch.save({"format": "xinslm-checkpoint-1", "model": payload}, path)
    with pytest.raises(XinslmError, match=re.escape(f"{path}: refused to load")):
        load_checkpoint(path)
    assert not marker.exists()


def test_save_leaves_no_temp_files(tmp_path):
    save_tiny(tmp_path / "ckpt.pt")
    save_tiny(tmp_path / "ckpt.pt")  # overwriting an existing one, too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_tiny(path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_tiny(path)
    assert path.read_bytes() == before
    assert dot_entries(tmp_path) == []


def test_same_contents_give_the_same_bytes(tmp_path):
    # DVC compares outputs by hash: a rerun that changes nothing must write identical bytes.
    save_tiny(tmp_path / "a.pt")
    save_tiny(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
