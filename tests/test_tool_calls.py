"""The calculator tool end to end: render-chat turns <<expr=result>> into a call the model
learns and a result it does not; at generation the engine answers a call by forcing the
result tokens in; replies read back as <<expr=result>>."""

import json
import urllib.request

import pytest
import torch
from conftest import live_server, render_chat_files, save_model_checkpoint

from xinslm import cli
from xinslm.artifact import open_array, read_meta
from xinslm.chat_template import decode_reply, render_conversation, render_prompt
from xinslm.engine import Engine
from xinslm.generate import chat_replies
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.sampling import Sampling
from xinslm.tokenizer import ByteTokenizer
from xinslm.tool_calls import Calculator

BYTE = ByteTokenizer()
S = BYTE.special
CALL, CALL_END = S["<|calc_start|>"], S["<|calc_end|>"]
RESULT, RESULT_END = S["<|result_start|>"], S["<|result_end|>"]
GREEDY = Sampling(max_new_tokens=30, temperature=0)

# A GSM8K-style record (our own words; GSM8K marks each computation as <<expr=result>>).
QUESTION = "Ada has 3 boxes of 4 pens. How many pens?"
ANSWER = "She has 3*4 = <<3*4=12>>12 pens.\n#### 12"


def b(text: str) -> list[int]:
    return list(text.encode())


def test_render_chat_turns_an_annotation_into_a_learned_call_and_an_unlearned_result(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ]
    }
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text(json.dumps(record) + "\n")
    val.write_text(json.dumps(record) + "\n")
    render_chat_files(train, val, BYTE, tmp_path / "chat", context_len=200)
    meta = read_meta(tmp_path / "chat", "chat", BYTE.identity())
    ids = open_array(tmp_path / "chat", meta, "train_ids").tolist()
    mask = open_array(tmp_path / "chat", meta, "train_mask").tolist()

    head = [S["<|bos|>"], S["<|user|>"], *b("\n" + QUESTION), S["<|end|>"], *b("\n")]
    head += [S["<|assistant|>"], *b("\n")]
    reply = [*b("She has 3*4 = "), CALL, *b("3*4"), CALL_END, RESULT, *b("12"), RESULT_END]
    reply += [*b("12 pens.\n#### 12"), S["<|end|>"]]
    assert ids == head + reply + b("\n")
    learned = [0] * len(head)
    learned += [1] * len("She has 3*4 = ") + [1] * (len("3*4") + 2)  # the call: learned
    learned += [0] * (len("12") + 2)  # the result and its delimiters: the tool's, not learned
    learned += [1] * (len("12 pens.\n#### 12") + 1) + [0]
    assert mask == learned


def test_without_tool_calls_the_annotation_stays_text():
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ANSWER}]
    ids, learned = render_conversation(conversation, BYTE, tool_calls=False)
    assert BYTE.decode(ids).count("<<3*4=12>>") == 1 and max(ids[8:-2]) < 256
    assert sum(learned) == len(ANSWER) + 1


def test_a_reply_decodes_back_to_its_annotation_whole_or_in_pieces():
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ANSWER}]
    ids, _ = render_conversation(conversation, BYTE)
    reply = ids[ids.index(S["<|assistant|>"]) + 2 : -2]  # the content, without <|end|>
    assert decode_reply(BYTE, reply) == ANSWER
    pieces = [decode_reply(BYTE, reply[i : i + 3]) for i in range(0, len(reply), 3)]
    assert "".join(pieces) == ANSWER
    # A prompt rebuilt from that text renders the same calls again.
    history = [*conversation, {"role": "user", "content": "more"}]
    again = [*conversation[:1], {"role": "assistant", "content": decode_reply(BYTE, reply)}]
    assert render_prompt(history, BYTE)[: len(ids)] == render_conversation(again, BYTE)[0]


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("6*7", "42"),
        ("10/4", "2.5"),
        ("__import__('os')", "error: only numbers and + - * / // % ** are allowed, not calls"),
        ("9**9**9", "error: exponent beyond 64"),
        ("1/0", "error: division by zero"),
    ],
)
def test_the_tool_answers_a_call_with_result_tokens(expression, result):
    tokens = [*b("so "), CALL, *b(expression), CALL_END]
    assert Calculator(BYTE).respond(tokens) == [RESULT, *b(result), RESULT_END]


def test_the_tool_refuses_a_call_it_cannot_read():
    calculator = Calculator(BYTE)
    assert calculator.answer([*b("6*7"), CALL_END]).startswith("error: no <|calc_start|>")
    assert calculator.answer([CALL, 0xFF, CALL_END]) == "error: not an arithmetic expression"
    assert calculator.answer([CALL, S["<|user|>"], CALL_END]).startswith("error:")


# --- generation -----------------------------------------------------------------------------


def bigram_model(chain: dict[int, int]) -> NanoChatModel:
    """A stand-in model whose greedy next token depends only on the last one: chain[last].
    One-hot embeddings, blocks that add nothing, a head that maps each id to its successor."""
    vocab = BYTE.vocab_size
    config = ModelConfig(
        vocab_size=vocab, context_len=64, n_layer=1, n_head=2, n_kv_head=1, n_embd=272
    )
    model = NanoChatModel(config)
    with torch.no_grad():
        model.wte.weight.copy_(torch.eye(vocab, 272))
        for block in model.blocks:
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for token, successor in chain.items():
            model.lm_head.weight[successor, token] = 1.0
    return model.eval()


# After the prompt's last "\n" the model writes a call of 6*7; after <|calc_end|> it would
# write "X" itself, and after a result "A"; "X" and "A" end the reply.
CHAIN = {
    ord("\n"): CALL,
    CALL: ord("6"),
    ord("6"): ord("*"),
    ord("*"): ord("7"),
    ord("7"): CALL_END,
    CALL_END: ord("X"),
    ord("X"): S["<|end|>"],
    RESULT_END: ord("A"),
    ord("A"): S["<|end|>"],
}
ASKS = [*b("\n"), CALL, *b("6*7"), CALL_END]
PROMPT = render_prompt([{"role": "user", "content": "six times seven?"}], BYTE)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_generation_receives_the_forced_result_tokens(device):
    # On CUDA the decode step is a replayed graph: the forced token must reach its input.
    model = bigram_model(CHAIN).to(device)
    engine = Engine(model, max_batch=2)
    tool = Calculator(BYTE)
    stop = {BYTE.end_id}
    with_tool = list(engine.generate(PROMPT, GREEDY, stop, tool))
    assert with_tool == [CALL, *b("6*7"), CALL_END, RESULT, *b("42"), RESULT_END, ord("A")]
    without = list(engine.generate(PROMPT, GREEDY, stop))
    assert without == [CALL, *b("6*7"), CALL_END, ord("X")]
    # Side by side in one batch, each row gets its own: the forced tokens go to the right row
    # also when the other row ends first and leaves.
    a = engine.add(PROMPT, GREEDY, stop, tool)
    c = engine.add(PROMPT, GREEDY, stop)
    while engine.busy:
        engine.step()
    assert (a.tokens, c.tokens) == (with_tool, without)
    assert ASKS[1:] == with_tool[:5]


def test_chat_replies_show_the_call_and_its_result():
    engine = Engine(bigram_model(CHAIN), max_batch=2)
    conversation = [{"role": "user", "content": "six times seven?"}]
    replies = chat_replies(engine, BYTE, [conversation], GREEDY, Calculator(BYTE))
    assert replies == ["<<6*7=42>>A"]
    assert chat_replies(engine, BYTE, [conversation], GREEDY) == ["<<6*7=X"]


# --- the CLI and the server answer calls too ----------------------------------------------


@pytest.fixture(scope="module")
def calling_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tool") / "chat.pt"
    return str(save_model_checkpoint(path, bigram_model(CHAIN)))


def test_xinslm_chat_answers_the_models_calls(calling_checkpoint, capsys):
    greedy = ["--temperature", "0", "--max-new-tokens", "30", "--device", "cpu"]
    cli.main(["chat", "--checkpoint", calling_checkpoint, "-p", "six times seven?", *greedy])
    assert capsys.readouterr().out == "<<6*7=42>>A\n"


def test_the_servers_chat_endpoint_answers_the_models_calls(calling_checkpoint):
    body = {"messages": [{"role": "user", "content": "six times seven?"}], "temperature": 0}
    with live_server(calling_checkpoint) as url:
        request = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            reply = json.load(response)
    assert reply["choices"][0]["message"]["content"] == "<<6*7=42>>A"
    assert reply["choices"][0]["finish_reason"] == "stop"
