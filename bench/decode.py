"""Inference speed: the engine's prefill, time to first token and decode tokens/s at batch 1,
its aggregate tokens/s at larger batches, against the reference generator; and the server
under N concurrent streaming clients.

    python bench/decode.py                       # CUDA: the d12 shape; CPU: params.yaml's model
    python bench/decode.py --device cpu --batches 1 4
    python bench/decode.py --server --clients 1 16

Models have random weights and no stop token, so every sequence runs to --new tokens.
GPU: nanochat's d12 shape (12 layers, 768 wide, 6 heads, vocab 32768, context 2048) in
bfloat16. CPU: the model of params.yaml (what `make run` trains) with the byte tokenizer's
vocabulary (261), float32. Every measurement runs once untimed first (CUDA graphs are
recorded then) and reports the median of --repeats timed runs. Needs torch and numpy; the
server part also fastapi and uvicorn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xinslm.config import load_params  # noqa: E402
from xinslm.engine import Engine  # noqa: E402
from xinslm.generate import generate  # noqa: E402
from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.sampling import Sampling  # noqa: E402

D12 = dict(context_len=2048, n_layer=12, n_head=6, n_kv_head=6, n_embd=768, vocab_size=32768)


def bench_model(device: torch.device) -> NanoChatModel:
    if device.type == "cuda":
        config = ModelConfig(**D12)
    else:
        (model_params,) = load_params("params.yaml", "model")
        config = ModelConfig.from_params(model_params, vocab_size=261)
    torch.manual_seed(0)
    model = NanoChatModel(config)
    for block in model.blocks:  # real output projections, so the logits vary
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.02)
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.02)
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def median_of(repeats: int, run) -> dict:
    run()  # untimed: compiles and records graphs, warms caches
    runs = [run() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def reference_row(model, args, device) -> dict:
    """The reference generator (xinslm.generate), batch 1, the model's dtype."""
    prompt = prompts(1, args.prompt, model.config.vocab_size)[0]
    sampling = Sampling(max_new_tokens=args.new, temperature=args.temperature, top_k=None)

    def run() -> dict:
        sync(device)
        start = time.perf_counter()
        n = sum(1 for _ in generate(model, prompt, sampling))
        sync(device)
        return {"tokens/s": n / (time.perf_counter() - start)}

    return median_of(args.repeats, run)


def engine_row(engine: Engine, batch: int, args) -> dict:
    """`batch` sequences added at once: time to first token (prefill included), decode
    tokens/s per sequence after it, and all new tokens over the whole time."""
    vocab = engine.config.vocab_size
    sampling = [
        Sampling(max_new_tokens=args.new, temperature=args.temperature, top_k=None, seed=i)
        for i in range(batch)
    ]

    def run() -> dict:
        pairs = zip(prompts(batch, args.prompt, vocab), sampling, strict=True)
        seqs = [engine.add(p, s) for p, s in pairs]
        sync(engine.device)
        start = time.perf_counter()
        first = None
        while engine.busy:
            engine.step()
            if first is None and all(s.tokens for s in seqs):
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        n = sum(len(s.tokens) for s in seqs)  # fewer than --new where the context ends first
        return {
            "ttft ms": first * 1e3,
            "decode tokens/s per seq": (n / batch - 1) / (total - first),
            "tokens/s all": n / total,
        }

    return median_of(args.repeats, run)


def prefill_row(engine: Engine, args) -> dict:
    """One long prompt through prefill: prompt tokens per second."""
    length = min(args.prefill, engine.config.context_len - 2)
    prompt = prompts(1, length, engine.config.vocab_size)[0]

    def run() -> dict:
        engine.add(prompt, Sampling(max_new_tokens=1, temperature=0))
        sync(engine.device)
        start = time.perf_counter()
        engine.step()
        sync(engine.device)
        return {"prefill tokens/s": length / (time.perf_counter() - start)}

    return median_of(args.repeats, run)


def table(rows: list[tuple[str, dict]]) -> None:
    keys = list(dict.fromkeys(k for _, r in rows for k in r))
    print("| run | " + " | ".join(keys) + " |")
    print("| --- |" + " --- |" * len(keys))
    for name, row in rows:
        cells = [f"{row[k]:,.1f}" if k in row else "" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")


def bench_engine(args, device: torch.device) -> None:
    model = bench_model(device)
    rows = []
    if args.reference:
        fp32 = bench_model(device).float()
        rows.append(("reference generate, float32, batch 1", reference_row(fp32, args, device)))
        del fp32
    engine = Engine(model, max_batch=max(args.batches), graphs=args.graphs)
    name = f"engine {str(engine.dtype).removeprefix('torch.')}"
    length = min(args.prefill, engine.config.context_len - 2)
    rows.append((f"{name} prefill, {length}-token prompt", prefill_row(engine, args)))
    for batch in args.batches:
        start = time.perf_counter()
        row = engine_row(engine, batch, args)
        row["s incl. warm-up"] = time.perf_counter() - start
        rows.append((f"{name}, batch {batch}", row))
    print(f"\n{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{model.num_params() / 1e6:.1f}M params, prompt {args.prompt}, new {args.new}, "
          f"temperature {args.temperature}, graphs {engine.use_graphs}")  # fmt: skip
    table(rows)


def profile_step(args, device: torch.device) -> None:
    """The kernels one eager decode step launches at batch 1 (what a CUDA graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    engine = Engine(bench_model(device), max_batch=1, graphs=False)
    engine.add(prompts(1, args.prompt, engine.config.vocab_size)[0], Sampling(temperature=0.8))
    for _ in range(3):
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        engine.step()
        sync(device)
    kind = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=kind, row_limit=40))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--new", type=int, default=256, help="new tokens per sequence")
    p.add_argument("--prefill", type=int, default=1024, help="prompt tokens of the prefill row")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--graphs", type=lambda s: s == "true", default=None, help="true/false")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--server", action="store_true", help="benchmark the HTTP server instead")
    p.add_argument("--profile", action="store_true", help="the kernels of one decode step")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    args = p.parse_args()
    device = torch.device(args.device)
    if args.server:
        bench_server(args, device)
    elif args.profile:
        profile_step(args, device)
    else:
        bench_engine(args, device)


def server_model(device: torch.device) -> NanoChatModel:
    """The served model: the engine rows' shape but the byte tokenizer's vocabulary (the
    server decodes the ids to text), and a head that never picks a special token under
    greedy decoding (their rows are zero, every other row is large), so replies run to
    max_tokens."""
    torch.manual_seed(0)
    shape = {**D12, "vocab_size": 261} if device.type == "cuda" else None
    model = NanoChatModel(ModelConfig(**shape)) if shape else bench_model(device).cpu()
    with torch.no_grad():
        torch.nn.init.normal_(model.lm_head.weight, std=0.3)
        model.lm_head.weight[256:] = 0
    return model


def stream_one(url: str, i: int, max_tokens: int) -> dict:
    """One streaming chat request: when its first text came, when it ended, its tokens."""
    import json
    import urllib.request

    body = {
        "model": "server",
        "messages": [{"role": "user", "content": f"Request {i}: tell me a long story. " * 2}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:  # server-sent events, a line at a time
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"start": start, "first": first, "end": time.perf_counter(), "tokens": tokens}


def clients_row(url: str, clients: int, max_tokens: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda i: stream_one(url, i, max_tokens), range(clients)))
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    ttft = sorted((r["first"] - r["start"]) * 1e3 for r in runs)
    return {
        "tokens/s all": sum(r["tokens"] for r in runs) / wall,
        "tokens/s per client": statistics.median(
            r["tokens"] / (r["end"] - r["start"]) for r in runs
        ),
        "ttft p50 ms": statistics.median(ttft),
        "ttft p95 ms": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
    }


def bench_server(args, device: torch.device) -> None:
    """N concurrent streaming clients against `xinslm serve` in this process."""
    from xinslm.checkpoint import save_checkpoint
    from xinslm.serve import ServeSettings, serving
    from xinslm.tokenizer import ByteTokenizer

    model = server_model(device)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = f"{tmp}/server.pt"
        save_checkpoint(
            checkpoint,
            model=model.state_dict(),
            model_config=model.config.to_dict(),
            tokenizer=ByteTokenizer().identity(),
            step=0,
        )
        settings = ServeSettings(checkpoint, str(device), max_batch=max(args.clients))
        rows = []
        with serving(settings) as url:
            for clients in args.clients:
                clients_row(url, clients, args.new)  # untimed: graphs for this batch
                runs = [clients_row(url, clients, args.new) for _ in range(args.repeats)]
                row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((f"{clients} streaming client{'s' * (clients > 1)}", row))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"\nxinslm serve on {name}, {model.num_params() / 1e6:.1f}M params (vocab 261), "
          f"max_tokens {args.new}, greedy")  # fmt: skip
    table(rows)


if __name__ == "__main__":
    main()
