"""Benchmark serving on SmolLM2-135M: ``HFEngine`` (base, one adapter, 8 mixed adapters) against PEFT servers.

Four scenarios run side by side in one process, under the same closed-loop load: ``--concurrency`` client
threads each send greedy chat requests (``--max-tokens`` output tokens, prompts asking for long essays) one
after the other until ``--requests`` are done. Reported per scenario: output tokens/s (all completion tokens
over the wall time of the scenario) and time to first token (from the moment a client sends, so waiting in
line counts), p50 and p95.

(a) ``HFEngine``, the base model only;
(b) ``HFEngine``, every request on the same LoRA adapter;
(c) ``HFEngine``, requests spread over 8 distinct adapters (request ``i`` uses adapter ``i % 8``);
(d) the naive server a user would write: one ``PeftModel`` holding the 8 adapters, requests served one at a
    time under a lock, ``set_adapter`` then ``model.generate`` (float32, transformers' defaults);
(e) the best a capable PEFT user would build instead: the same ``PeftModel`` in bf16 where this machine is
    measured faster at it (``tunery.hardware.precision``), and a batcher thread that gathers every waiting
    request (up to ``--concurrency``) into one left-padded ``model.generate(adapter_names=[...])`` — PEFT's
    mixed-adapter batch — while the next requests queue (requests ``i`` on adapter ``i % 8``, as in (c)).
    Its time to first token is when the batch's first token is chosen.

The scenarios run in ``--rounds`` interleaved rounds (a, b, c, d, e, a, b, ...) so that load from other
processes on a shared machine hits all of them alike: the table sums the rounds, and the ``checks`` take the
median over rounds of same-round ratios. Last, the decode step of a full batch is timed alone for base / one
adapter / mixed adapters, interleaved step by step — the adapters' own cost, least disturbed by other load —
when the engine runs the ``transformers`` forward; with its lean forward, ``bench/decode_step.py`` times that.

Adapters are random LoRA r=16 on q,k,v,o with non-zero ``B`` (seeded), written to ``bench/out/serve_adapters/``;
the model is prepared into ``bench/out/models/`` on first use. Results also go to
``bench/out/serve_throughput.json``. Where other processes use the CPU, pass ``--threads 1``: with torch's
default of one thread per core, OpenMP threads that wait for each other run several times slower.

    PYTHONPATH=src .venv/bin/python bench/serve_throughput.py --threads 1   # ~9 min on 2 busy vCPUs
    PYTHONPATH=src .venv/bin/python bench/serve_throughput.py --quick       # one short round, to try it out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunery.catalog import BUNDLED_MODELS, ChatTokenizer
from tunery.catalog.materialize import prepare
from tunery.inference.engine import GenerationRequest, SamplingParams
from tunery.inference.hf_engine import HFEngine
from tunery.inference.kv_cache import PaddedKVCache

OUT_DIR = Path(__file__).resolve().parent / "out"
MODEL = BUNDLED_MODELS[0]
ADAPTERS = 8
TOPICS = (
    "the history of the Roman Empire",
    "how rainbows form",
    "the water cycle",
    "why cats purr",
    "the invention of paper",
    "how volcanoes erupt",
    "the first moon landing",
    "how honey bees communicate",
    "the causes of the French Revolution",
    "how airplanes fly",
    "the life of Marie Curie",
    "how the internet works",
    "the Great Wall of China",
    "photosynthesis",
    "the printing press",
    "why the sky is blue",
)
STYLES = ("Write a long, detailed essay about {}.", "Explain {} to a curious student, step by step, at length.")

BASE = "(a) HFEngine, base model"
ONE = "(b) HFEngine, 1 adapter"
MIXED = f"(c) HFEngine, {ADAPTERS} mixed adapters"
NAIVE = "(d) naive: PEFT set_adapter + generate, one at a time"
PEFT_BATCHED = f"(e) PEFT generate(adapter_names), batches over {ADAPTERS} adapters"

# A request runs a client function: (prompt index, adapter index or None) -> (seconds to first token, tokens).
Client = Callable[[int, int | None], tuple[float, int]]


@dataclass
class Totals:
    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0

    def add(self, tokens: int, seconds: float, requests: int) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.requests += requests


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft 0.21 on transformers 5.24 (deprecations)
    model_dir = prepare(MODEL, OUT_DIR / "models", "all")
    adapter_dirs = make_adapters(model_dir, OUT_DIR / "serve_adapters")
    tokenizer = ChatTokenizer.from_dir(model_dir)
    prompts = [
        tokenizer.encode(
            tokenizer.render([{"role": "user", "content": style.format(topic)}], add_generation_prompt=True)
        )
        for style in STYLES
        for topic in TOPICS
    ]
    load_before = os.getloadavg()

    engine = HFEngine({MODEL.name: model_dir}, max_batch_size=args.concurrency, max_loaded_adapters=ADAPTERS)
    engine_client = make_engine_client(engine, prompts, adapter_dirs, args.max_tokens)
    naive_client, naive_dtype = make_naive_client(model_dir, prompts, adapter_dirs, args.max_tokens)
    # Warm up (first-call allocations, adapter loads) outside the measurements.
    for adapter in [None, *range(ADAPTERS)]:
        engine_client(0, adapter)
    naive_client(0, 0)
    batched_client, batched_dtype = make_peft_batched_client(
        model_dir, prompts, adapter_dirs, args.max_tokens, args.concurrency
    )
    batched_client(0, 0)

    scenarios: dict[str, tuple[Client, Callable[[int], int | None], int]] = {
        BASE: (engine_client, lambda i: None, args.requests),
        ONE: (engine_client, lambda i: 0, args.requests),
        MIXED: (engine_client, lambda i: i % ADAPTERS, args.requests),
        NAIVE: (naive_client, lambda i: i % ADAPTERS, args.naive_requests),
        PEFT_BATCHED: (batched_client, lambda i: i % ADAPTERS, args.requests),
    }
    totals = {name: Totals() for name in scenarios}
    ttfts: dict[str, list[float]] = {name: [] for name in scenarios}
    rounds: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        per_round = {}
        for name, (client, adapter_of, count) in scenarios.items():
            offset = round_index * count  # different prompts each round
            seconds, results = closed_loop(client, adapter_of, count, args.concurrency, offset, len(prompts))
            tokens = sum(n for _, n in results)
            totals[name].add(tokens, seconds, count)
            ttfts[name] += [t for t, _ in results]
            per_round[name] = round(tokens / seconds, 1)
            print(f"round {round_index + 1} {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
        rounds.append(per_round)
    # The decode step alone, through the transformers forward; with the lean forward (which releases that
    # forward's weights in bf16) bench/decode_step.py times the step instead.
    lean = engine._runtimes[MODEL.name].loaded.lean is not None  # the bench looks inside on purpose
    steps = {} if lean else decode_step_times(engine, adapter_dirs, prompts, args.concurrency, args.step_repeats)
    engine.close()
    load_after = os.getloadavg()

    one_adapter = throughput(totals[ONE])
    rows = [
        {
            "scenario": name,
            "requests": total.requests,
            "output_tokens": total.tokens,
            "seconds": round(total.seconds, 1),
            "tokens_per_s": round(throughput(total), 1),
            "vs_one_adapter": round(throughput(total) / one_adapter, 2),
            "ttft_p50_s": round(percentile(ttfts[name], 50), 2),
            "ttft_p95_s": round(percentile(ttfts[name], 95), 2),
        }
        for name, total in totals.items()
    ]
    report = {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "engine_dtype": str(engine.dtype),
        "naive_dtype": naive_dtype,
        "peft_batched_dtype": batched_dtype,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "results": rows,
        "per_round_tokens_per_s": rounds,
        "decode_step_ms": steps,
        "checks": {
            # Ratios of the same round, then the median over rounds: load from other processes cancels out.
            "one_adapter_vs_base": paired(rounds, ONE, BASE),
            "mixed_vs_one_adapter": paired(rounds, MIXED, ONE),
            "mixed_vs_naive": paired(rounds, MIXED, NAIVE),
            "mixed_vs_peft_batched": paired(rounds, MIXED, PEFT_BATCHED),
            "decode_step_one_adapter_vs_base": round(steps[BASE]["median"] / steps[ONE]["median"], 3)
            if steps
            else None,
            "decode_step_mixed_vs_one_adapter": round(steps[ONE]["median"] / steps[MIXED]["median"], 3)
            if steps
            else None,
        },
    }
    (OUT_DIR / "serve_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def decode_step_times(
    engine: HFEngine, adapter_dirs: list[Path], prompts: list[list[int]], batch: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Milliseconds per decode step of a full batch for base / one adapter / mixed adapters, interleaved step by
    step (base, one, mixed, base, ...) so that other processes' load hits the three alike.

    Drives the engine's model, cache and ``MultiLora`` directly (the scheduler's decode step without the
    thread): the pure cost of the adapters in a forward pass, apart from queueing and prefill.
    """
    runtime = engine._runtimes[MODEL.name]  # the bench looks inside on purpose
    loaded, adapters = runtime.loaded, runtime.adapters
    pinned = [adapters.acquire(f"adapter-{i}", path.resolve()) for i, path in enumerate(adapter_dirs)]
    layouts = {BASE: [None] * batch, ONE: [pinned[0]] * batch, MIXED: [pinned[i % ADAPTERS] for i in range(batch)]}
    states = {}
    with torch.inference_mode():
        for name, rows in layouts.items():
            ids = [prompts[i % len(prompts)] for i in range(batch)]
            width = max(map(len, ids))
            cache = PaddedKVCache(loaded.num_layers, [width - len(p) for p in ids], width + repeats + 8)
            tokens = torch.tensor([[0] * (width - len(p)) + p for p in ids])
            mask = torch.ones(batch, 1, width, width, dtype=torch.bool).tril()
            for i, p in enumerate(ids):  # left padding is masked out (each padding query sees itself)
                mask[i, :, :, : width - len(p)] = False
                mask[i, 0].fill_diagonal_(True)
            pads = torch.tensor([[width - len(p)] for p in ids])
            loaded.model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=(torch.arange(width)[None, :] - pads).clamp(min=0),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            positions = torch.tensor([[len(p)] for p in ids])
            states[name] = (cache, positions, loaded.lora.plan(rows), [])
        for _ in range(repeats + 2):
            for cache, positions, plan, times in states.values():
                start = time.perf_counter()
                with loaded.lora.applied(plan):
                    loaded.model(
                        input_ids=torch.zeros_like(positions),
                        attention_mask=cache.decode_mask(loaded.device),
                        position_ids=positions,
                        cache=cache,
                        use_cache=True,
                    )
                times.append(time.perf_counter() - start)
                positions += 1
    for adapter in pinned:
        adapters.release(adapter)
    return {
        name: {
            "median": round(statistics.median(times[2:]) * 1e3, 1),
            "min": round(min(times[2:]) * 1e3, 1),
        }
        for name, (_, _, _, times) in states.items()
    }


def paired(rounds: list[dict[str, float]], numerator: str, denominator: str) -> float:
    return round(statistics.median(r[numerator] / r[denominator] for r in rounds), 3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="requests per engine scenario and round")
    parser.add_argument("--naive-requests", type=int, default=4, help="requests per round for the naive server")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (and the engine batch size)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--step-repeats", type=int, default=20, help="interleaved decode steps per layout")
    parser.add_argument("--quick", action="store_true", help="1 round, 16 requests, 2 naive, 32 tokens")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.naive_requests, args.max_tokens, args.rounds, args.step_repeats = 16, 2, 32, 1, 5
    return args


def make_adapters(model_dir: Path, root: Path) -> list[Path]:
    """Random LoRA r=16 (alpha 32) on q,k,v,o with seeded non-zero A and B, saved by peft; reused if present."""
    dirs = [root / f"adapter-{i}" for i in range(ADAPTERS)]
    if all((d / "adapter_model.safetensors").is_file() for d in dirs):
        return dirs
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, config)
    for i, folder in enumerate(dirs):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_A" in name:  # peft's kaiming-uniform scale
                    param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) / param.shape[1] ** 0.5)
                elif "lora_B" in name:  # peft starts B at zero, which would make the adapter a no-op
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
        peft_model.save_pretrained(folder)
    return dirs


def make_engine_client(engine: HFEngine, prompts: list[list[int]], adapters: list[Path], max_tokens: int) -> Client:
    def client(prompt: int, adapter: int | None) -> tuple[float, int]:
        request = GenerationRequest(
            base_model=MODEL.name,
            prompt_ids=prompts[prompt],
            params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
            adapter_dir=None if adapter is None else str(adapters[adapter]),
            adapter_name=None if adapter is None else f"adapter-{adapter}",
        )
        start = time.perf_counter()
        first, tokens = None, 0
        for chunk in engine.generate(request):
            if first is None:
                first = time.perf_counter() - start
            tokens = chunk.completion_tokens
        return first or 0.0, tokens

    return client


def make_naive_client(
    model_dir: Path, prompts: list[list[int]], adapters: list[Path], max_tokens: int
) -> tuple[Client, str]:
    """What a user would write: PeftModel + load_adapter per adapter; serve one request at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    base = AutoModelForCausalLM.from_pretrained(model_dir)  # transformers' default dtype: float32
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name="adapter-0")
    for i in range(1, len(adapters)):
        model.load_adapter(adapters[i], adapter_name=f"adapter-{i}")
    model.eval()
    lock = threading.Lock()
    eos = base.generation_config.eos_token_id

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls = 0
            self.at = 0.0

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls == 2:  # the first call carries the prompt
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    def client(prompt: int, adapter: int | None) -> tuple[float, int]:
        start = time.perf_counter()
        ids = torch.tensor([prompts[prompt]])
        streamer = FirstToken()
        with lock, torch.inference_mode():
            model.set_adapter(f"adapter-{adapter}")
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
                streamer=streamer,
            )
        return streamer.at - start, out.shape[1] - ids.shape[1]

    return client, str(base.dtype)


def make_peft_batched_client(
    model_dir: Path, prompts: list[list[int]], adapters: list[Path], max_tokens: int, max_batch: int
) -> tuple[Client, str]:
    """PEFT's mixed-adapter batches behind a batcher thread (scenario (e)); returns the client and the dtype."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    from tunery.hardware.precision import fastest_format

    dtype = torch.bfloat16 if fastest_format("weights") == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name="adapter-0")
    for i in range(1, len(adapters)):
        model.load_adapter(adapters[i], adapter_name=f"adapter-{i}")
    model.eval()
    eos = base.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    pad = next(iter(eos_ids), 0)
    waiting: queue.Queue[tuple[list[int], str, Future[tuple[float, int]]]] = queue.Queue()

    class FirstToken(LogitsProcessor):
        def __init__(self) -> None:
            self.at = 0.0

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not self.at:
                self.at = time.perf_counter()
            return scores

    def batcher() -> None:
        while True:
            batch = [waiting.get()]
            while len(batch) < max_batch:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            width = max(len(ids) for ids, _, _ in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _, _ in batch])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _, _ in batch])
            first = FirstToken()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    adapter_names=[name for _, name, _ in batch],
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=pad,
                    logits_processor=LogitsProcessorList([first]),
                )
            for row, (_, _, future) in zip(out[:, width:].tolist(), batch, strict=True):
                ends = [i for i, token in enumerate(row) if token in eos_ids]
                future.set_result((first.at, ends[0] + 1 if ends else len(row)))

    threading.Thread(target=batcher, daemon=True).start()

    def client(prompt: int, adapter: int | None) -> tuple[float, int]:
        start = time.perf_counter()
        future: Future[tuple[float, int]] = Future()
        waiting.put((prompts[prompt], "__base__" if adapter is None else f"adapter-{adapter}", future))
        first_at, tokens = future.result()
        return first_at - start, tokens

    return client, str(dtype)


def closed_loop(
    client: Client, adapter_of: Callable[[int], int | None], count: int, concurrency: int, offset: int, prompts: int
) -> tuple[float, list[tuple[float, int]]]:
    """``concurrency`` threads send requests 0..count-1 back to back; returns wall seconds and per-request results."""
    results: list[tuple[float, int]] = [(0.0, 0)] * count
    next_request = iter(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                return
            results[i] = client((offset + i) % prompts, adapter_of(i))

    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, count))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, results


def throughput(total: Totals) -> float:
    return total.tokens / total.seconds if total.seconds else 0.0


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    return f"{os.cpu_count()} vCPU {cpu}, {memory:.0f} GiB RAM, {versions}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| scenario | requests | output tokens | seconds | output tok/s | vs 1 adapter | TTFT p50 s | TTFT p95 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['scenario']} | {row['requests']} | {row['output_tokens']} | {row['seconds']} | "
            f"{row['tokens_per_s']} | {row['vs_one_adapter']} | {row['ttft_p50_s']} | {row['ttft_p95_s']} |"
        )
    settings = {k: v for k, v in report.items() if k not in ("results", "per_round_tokens_per_s")}
    return "\n".join(lines) + "\n\n" + json.dumps(settings, indent=2)


if __name__ == "__main__":
    main()
