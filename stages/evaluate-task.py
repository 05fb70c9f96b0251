"""Stage evaluate-task NAME: chat.pt on the task eval.tasks names NAME -> eval/tasks/NAME.json
(metrics) and eval/tasks/NAME.jsonl (every item's prediction, to read what went wrong)."""

import json
import sys

from xinslm.artifact import open_array, read_meta
from xinslm.atomic import atomic_file, write_json
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.config import load_params
from xinslm.device import pick_device
from xinslm.engine import Engine
from xinslm.errors import XinslmError, run_main
from xinslm.sampling import Sampling
from xinslm.tasks import load_items, mark_contamination, run_answer_task, run_choice_task
from xinslm.tokenizer import tokenizer_for
from xinslm.tool_calls import Calculator

CHAT, CHATS, OUT = "checkpoints/chat.pt", "data/chat", "eval/tasks"


def main() -> None:
    tok_p, ev, chat = load_params("params.yaml", "tokenizer", "eval", "chat")
    task = next((t for t in ev.tasks if t.name == sys.argv[1]), None)
    if task is None:
        raise XinslmError(f"params.yaml: no task named '{sys.argv[1]}' in eval.tasks")
    ckpt = load_checkpoint(CHAT)
    tokenizer = tokenizer_for(ckpt["tokenizer"], CHAT, tok_p.encodings_dir)
    model = model_from_checkpoint(ckpt).to(pick_device(ev.device))
    items = load_items(task.path, task.kind, task.limit, chat.utf8_errors)
    if task.kind == "answer":
        engine = Engine(model, max_batch=min(ev.batch_size, len(items) * task.samples))
        sampling = Sampling(1, ev.temperature, ev.top_k, ev.top_p, ev.seed)
        tool = Calculator(tokenizer) if ev.tool else None
        rows, metrics = run_answer_task(engine, tokenizer, items, task.samples, sampling, tool)
        metrics["tool"] = ev.tool
    else:
        rows, metrics = run_choice_task(model.eval(), tokenizer, items)

    meta = read_meta(CHATS, "chat", ckpt["tokenizer"])
    fingerprints = [open_array(CHATS, meta, f"train_fingerprint{s}") for s in ("s", "_owners")]
    metrics["contaminated"] = mark_contamination(rows, *fingerprints)
    with atomic_file(f"{OUT}/{task.name}.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json(f"{OUT}/{task.name}.json", metrics)
    print(f"evaluate-task {task.name}: {json.dumps(metrics)}")


if __name__ == "__main__":
    run_main(main)
