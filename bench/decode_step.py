"""Benchmark one decode step of ``HFEngine`` on SmolLM2-135M against this machine's memory and compute bounds.

Measures, in one run: (1) the machine: memory bandwidth (a large tensor copy, bytes read + written per second)
and GEMM throughput in fp32 and bf16; (2) the engine's decode step, taken from the scheduler's own step log
(forward pass + sampling, per step) while ``--batch`` requests decode together (greedy, ``--prompt`` tokens of
context each), for the base model and for a batch spread over ``--adapters`` random LoRA adapters (r=16 on
q,k,v,o); (3) the bound for that step: every weight read once (bytes / bandwidth) and ``2 x params x batch``
FLOPs (over the GEMM rate), whichever is larger; (4) the aten operators one decode step runs (torch.profiler,
inside the scheduler's decode steps with every row in — deterministic, unlike times on a shared machine).
``--forward`` compares the lean llama forward (``lean_llama``) with transformers' own, or the lean forward with
torch's attention in decode steps (``lean-sdpa``) against the native kernel (``decode_attention``), in the same
run: all variants are loaded at once and take turns (``--rounds``). Optionally (``--profile``) the top operators
of a few steps.

Several variants at once means several scheduler threads, each with its own OpenMP pool: on a 2-core machine
libgomp then stops spinning between parallel regions and every variant's step is slower (17-19 against 11 ms
at batch 1 here; ``tunery.inference.openmp``). Their ratio stays comparable; for a step's own time, run one
variant per process.

    PYTHONPATH=src .venv/bin/python bench/decode_step.py --threads 2 --batch 1 16 --forward lean transformers
    PYTHONPATH=src .venv/bin/python bench/decode_step.py --model-dir /path/to/prepared/SmolLM2 --profile

The model is prepared into ``bench/out/models/`` on first use unless ``--model-dir`` names a prepared folder.
On a shared machine the step times include other processes' load: compare rows taken in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tunery.catalog import BUNDLED_MODELS
from tunery.catalog.materialize import prepare
from tunery.inference.engine import GenerationRequest, SamplingParams
from tunery.inference.hf_engine import HFEngine
from tunery.inference.openmp import in_passing_thread

OUT_DIR = Path(__file__).resolve().parent / "out"
MODEL = BUNDLED_MODELS[0]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Torch work of this thread runs in passing threads, as the engine's own does (tunery.inference.openmp): an
    # idle OpenMP pool left in this thread would slow every parallel region of the engine's scheduler.
    model_dir = (
        Path(args.model_dir) if args.model_dir else in_passing_thread(lambda: prepare(MODEL, OUT_DIR / "models", "all"))
    )
    print(f"CPU: {cpu_name()}; torch threads {torch.get_num_threads()}; load average {load():.1f}")
    bandwidth = in_passing_thread(memory_bandwidth)
    gemm = {dtype: in_passing_thread(lambda dtype=dtype: gemm_rate(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    print(
        f"memory bandwidth {bandwidth / 1e9:.1f} GB/s; GEMM fp32 {gemm[torch.float32] / 1e9:.0f} GFLOP/s, "
        f"bf16 {gemm[torch.bfloat16] / 1e9:.0f} GFLOP/s"
    )
    adapter_dirs = (
        in_passing_thread(lambda: make_adapters(model_dir, OUT_DIR / "serve_adapters", args.adapters))
        if args.adapters
        else []
    )
    variants = [(d, f) for d in args.dtype for f in args.forward]
    with contextlib.ExitStack() as stack:  # every variant loaded at once, so their timings can be interleaved
        engines = {}
        for dtype, forward in variants:
            engine = stack.enter_context(
                HFEngine(
                    {MODEL.name: model_dir},
                    dtype=dtype,
                    max_batch_size=max(args.batch),
                    max_loaded_adapters=max(1, args.adapters),
                    lean_forward=forward != "transformers",
                    native_attention=forward == "lean",
                )
            )
            warm(engine)
            engines[(dtype, forward)] = engine
        cases = [(batch, mixed) for batch in args.batch for mixed in ([False, True] if adapter_dirs else [False])]
        for (dtype, forward), engine in engines.items():
            for batch, mixed in cases:
                label = f"{args.adapters} adapters" if mixed else "base"
                ops, top = ops_per_step(engine, batch, adapter_dirs if mixed else [])
                print(
                    f"{dtype:>8} {forward:>12} batch {batch:>2} {label:>10}: {ops:.0f} aten ops per decode step "
                    f"({top:.0f} called from Python)"
                )
        for batch, mixed in cases:
            steps: dict[tuple[str, str], list[float]] = {variant: [] for variant in engines}
            for _ in range(args.rounds):  # variants alternate, so load drifting on a shared machine hits them alike
                for variant, engine in engines.items():
                    rows = decode_steps(engine, batch, args.prompt, args.steps, adapter_dirs if mixed else [])
                    steps[variant] += rows
            for (dtype, forward), engine in engines.items():
                report(
                    engine,
                    dtype,
                    forward,
                    batch,
                    args.adapters if mixed else 0,
                    steps[(dtype, forward)],
                    bandwidth,
                    gemm,
                )
        for (dtype, forward), engine in engines.items():
            if args.profile:
                profile(engine, max(args.batch), args.prompt)
            if args.shared_prefix:
                print(f"{dtype} {forward}:", end=" ")
                shared_prefix_ttft(engine, args.shared_prefix, args.repeats)
    print(f"load average after {load():.1f}")


def report(
    engine: HFEngine,
    dtype: str,
    forward: str,
    batch: int,
    adapters: int,
    steps: list[float],
    bandwidth: float,
    gemm: dict[torch.dtype, float],
) -> None:
    """Print the step times of one variant against the bound of its weights."""
    loaded = engine._runtimes[MODEL.name].loaded
    params = sum(p.numel() for p in loaded.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    if loaded.lean is not None:  # packed weights are not the model's parameters any more
        weight_bytes = loaded.lean.weight_bytes
        params = weight_bytes // loaded.lean.embed.element_size()
    median = statistics.median(steps)
    flops_s = 2 * params * batch / gemm[loaded.model.dtype]
    bound = max(weight_bytes / bandwidth, flops_s)
    label = f"{adapters} adapters" if adapters else "base"
    print(
        f"{dtype:>8} {forward:>12} batch {batch:>2} {label:>10}: step median {median * 1e3:6.1f} ms "
        f"(p10 {quantile(steps, 0.1) * 1e3:.1f}, p90 {quantile(steps, 0.9) * 1e3:.1f}, {len(steps)} steps) = "
        f"{batch / median:6.1f} tok/s; bound {bound * 1e3:.1f} ms (weights {weight_bytes / 1e6:.0f} MB "
        f"/ bandwidth {weight_bytes / bandwidth * 1e3:.1f} ms, compute {flops_s * 1e3:.1f} ms) -> "
        f"{bound / median:.0%} of the bound"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a prepared model folder (default: prepare into bench/out/models)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--dtype", nargs="+", default=["auto"], help="auto, float32, bfloat16")
    parser.add_argument(
        "--forward",
        nargs="+",
        default=["lean"],
        choices=["lean", "lean-sdpa", "transformers"],
        help="forward pass(es) to run (lean-sdpa: the lean forward with torch's attention in decode steps)",
    )
    parser.add_argument("--prompt", type=int, default=256, help="context tokens per row")
    parser.add_argument("--steps", type=int, default=40, help="decode steps timed per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the variants take turns")
    parser.add_argument("--adapters", type=int, default=0, help="also run the batch spread over this many adapters")
    parser.add_argument("--profile", action="store_true", help="print the top operators of a few decode steps")
    parser.add_argument(
        "--shared-prefix", type=int, default=0, help="also time first tokens with a shared system prompt this long"
    )
    parser.add_argument("--repeats", type=int, default=5, help="requests per variant for --shared-prefix")
    return parser.parse_args()


def decode_steps(engine: HFEngine, batch: int, prompt: int, steps: int, adapter_dirs: list[Path]) -> list[float]:
    """Seconds of each decode step in which all ``batch`` rows decoded, from the scheduler's step log."""
    scheduler = engine._runtimes[MODEL.name].scheduler
    scheduler.step_log.clear()
    requests = []
    for i in range(batch):
        adapter = adapter_dirs[i % len(adapter_dirs)] if adapter_dirs else None
        requests.append(
            GenerationRequest(
                base_model=MODEL.name,
                prompt_ids=[(17 * i + 31 * j) % 20000 + 100 for j in range(prompt)],
                params=SamplingParams(max_tokens=steps + 2, temperature=0.0),
                adapter_dir=str(adapter) if adapter else None,
                adapter_name=adapter.name if adapter else None,
                stop_token_ids=(),
            )
        )
    with ThreadPoolExecutor(batch) as pool:
        list(pool.map(lambda r: list(engine.generate(r)), requests))
    return [s.seconds for s in scheduler.step_log if s.kind == "decode" and len(s.requests) == batch]


def ops_per_step(engine: HFEngine, batch: int, adapter_dirs: list[Path]) -> tuple[float, float]:
    """aten operators per decode step of ``batch`` rows: all of them (nested ones included) and those called from
    Python (not from inside another aten operator), averaged over the profiled decode steps with every row in.

    Each decode step is wrapped in a profiler range (in the bench only), so prefills and partial batches do not
    count and the figure is exact whatever the threads' timing.
    """
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    scheduler = engine._runtimes[MODEL.name].scheduler
    original = scheduler._decode_step

    def labelled() -> None:
        with record_function(f"bench-decode-{scheduler._decoding}"):
            original()

    every_thread = _ExperimentalConfig(profile_all_threads=True)  # the forward runs in the scheduler's thread
    decode_steps(engine, batch, 32, 4, adapter_dirs)  # warm the same shapes first
    scheduler._decode_step = labelled  # type: ignore[method-assign]
    try:
        with torch_profile(activities=[ProfilerActivity.CPU], experimental_config=every_thread) as prof:
            decode_steps(engine, batch, 32, 8, adapter_dirs)
    finally:
        del scheduler._decode_step
    totals: list[tuple[int, int]] = []
    for event in prof.events():
        if event.name == f"bench-decode-{batch}":
            every, top = 0, 0
            pending = [(child, True) for child in event.cpu_children]
            while pending:
                child, outermost = pending.pop()
                is_aten = child.name.startswith("aten::")
                every += is_aten
                top += is_aten and outermost
                pending += [(c, outermost and not is_aten) for c in child.cpu_children]
            totals.append((every, top))
    if not totals:
        return float("nan"), float("nan")
    return statistics.mean(t[0] for t in totals), statistics.mean(t[1] for t in totals)


def shared_prefix_ttft(engine: HFEngine, length: int, repeats: int) -> None:
    """Time to first token of one request: a ``length``-token system prompt + a short distinct question, with the
    system prompt's keys and values cached (after a first request) and with prefix caching bypassed (a distinct
    system prompt each time), interleaved."""
    system = [(13 * j) % 20000 + 100 for j in range(length)]
    cached: list[float] = []
    fresh: list[float] = []
    for i in range(repeats + 1):
        question = [(7 * i + 3 * j) % 20000 + 100 for j in range(20)]
        other = [(13 * j + 101 * (i + 1)) % 20000 + 100 for j in range(length)]
        for tokens, sink in ((system + question, cached), (other + question, fresh)):
            request = GenerationRequest(MODEL.name, tokens, SamplingParams(max_tokens=1, temperature=0.0))
            began = time.perf_counter()
            list(engine.generate(request))
            if i:  # the first round fills the cache with the shared system prompt
                sink.append(time.perf_counter() - began)
    print(
        f"time to first token, {length}-token shared system prompt + 20-token question: prefix cached "
        f"{statistics.median(cached) * 1e3:.0f} ms, not cached {statistics.median(fresh) * 1e3:.0f} ms "
        f"(medians of {repeats}; {statistics.median(fresh) / statistics.median(cached):.1f}x)"
    )


def warm(engine: HFEngine) -> None:
    request = GenerationRequest(MODEL.name, list(range(100, 140)), SamplingParams(max_tokens=4, temperature=0.0))
    list(engine.generate(request))


def profile(engine: HFEngine, batch: int, prompt: int) -> None:
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    every_thread = _ExperimentalConfig(profile_all_threads=True)
    with torch_profile(activities=[ProfilerActivity.CPU], experimental_config=every_thread) as prof:
        decode_steps(engine, batch, prompt, 8, [])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def make_adapters(model_dir: Path, root: Path, count: int) -> list[Path]:
    """Random LoRA r=16 on q,k,v,o with non-zero B, seeded (re-used when already written)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = [root / f"adapter-{i}" for i in range(count)]
    missing = [d for d in dirs if not (d / "adapter_model.safetensors").is_file()]
    if missing:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model = get_peft_model(base, config)
        for i, folder in enumerate(dirs):
            generator = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_" in name:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            model.save_pretrained(folder)
    return dirs


def memory_bandwidth() -> float:
    """Bytes read + written per second copying a 256 MiB tensor (best of 5)."""
    source = torch.ones(64 * 2**20, dtype=torch.float32)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - began)
    return 2 * source.nbytes / best


def gemm_rate(dtype: torch.dtype) -> float:
    """FLOP/s of a 1024 x 1024 x 1024 matmul in ``dtype`` (best of 5)."""
    a = torch.randn(1024, 1024).to(dtype)
    b = torch.randn(1024, 1024).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * 1024**3 / best


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> float:
    import os

    return os.getloadavg()[0]


if __name__ == "__main__":
    main()
