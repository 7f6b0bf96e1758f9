"""Data-parallel training throughput: the same job trained with 1 and with N processes (torchrun), side by side.

Each configuration runs ``python -m tunery.training [--processes N] spec.json`` as the worker does, on the same
data, seed and global batch (fp32), ``--repeat`` times interleaved (1, 2, 1, 2, ...). Reported: the median and
spread of real training tokens/s over the steps (the trainer's own per-step ``tokens_per_s``, the first step left
out as warm-up), and the final training loss (equal for every process count: the point of the design).
Each rank gets ``--threads`` threads; on a 2-core CPU two ranks of one thread compete with one rank of two.

    PYTHONPATH=src .venv/bin/python bench/distributed_train.py --model tiny --processes 1 2          # ~1 min
    PYTHONPATH=src .venv/bin/python bench/distributed_train.py --model smollm2 --processes 1 2 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "ate",
    "fish",
    "with",
    "great",
    "joy",
    "while",
    "two",
    "dogs",
    "barked",
    "at",
    "the",
    "moon",
]


def chats(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(10, 60)))},
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(40, 200)))},
            ]
        }
        for _ in range(n)
    ]


def model_dir(name: str, work: Path) -> Path:
    if name == "tiny":
        from tunery.testing.tiny_model import build_tiny_model

        return build_tiny_model(work / "tiny")
    from tunery.catalog import BUNDLED_MODELS
    from tunery.catalog.materialize import prepare

    return prepare(BUNDLED_MODELS[0], ROOT / "out" / "models", "all")


def train(base: Path, work: Path, processes: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    from tunery.training.progress import ProgressKind, ProgressReader
    from tunery.training.spec import LoraSpec, TrainingSpec

    run_dir = work / tag
    run_dir.mkdir(parents=True)
    spec = TrainingSpec(
        job_id=f"ftjob-bench-{tag}",
        run_dir=str(run_dir),
        base_model_dir=str(base),
        train_file=str(work / "train.jsonl"),
        validation_file=None,
        method="supervised",
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate=5e-4,
        seed=0,
        lora=LoraSpec(r=16, alpha=32),
        max_seq_len=512,
        dtype="fp32",
        device="cpu",
        num_threads=args.threads,
        processes=processes,
    )
    spec.write(run_dir / "spec.json")
    ranks = ["--processes", str(processes)] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([sys.executable, "-m", "tunery.training", *ranks, str(run_dir / "spec.json")], env=env, check=True)
    steps = [r.data for r in ProgressReader(run_dir).read_new() if r.kind is ProgressKind.STEP]
    timed = steps[1:] or steps
    return {
        "tokens_per_s": statistics.median(s["tokens_per_s"] for s in timed),
        "final_loss": steps[-1]["train_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="threads per rank")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunery-bench-dist-"))
    base = model_dir(args.model, work)
    (work / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats(args.steps * args.batch_size)))
    results: dict[int, list[dict[str, Any]]] = {p: [] for p in args.processes}
    for round_ in range(args.repeat):
        for processes in args.processes:
            results[processes].append(train(base, work, processes, args, f"p{processes}-r{round_}"))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    print(f"\n{args.model}, fp32, batch {args.batch_size}, {args.steps} steps, {args.threads} thread(s)/rank; {cpu}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print("| processes | tokens/s median (min-max) | final loss |")
    print("|---|---|---|")
    for processes, runs in results.items():
        rates = [r["tokens_per_s"] for r in runs]
        print(
            f"| {processes} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {runs[0]['final_loss']:.5f} |"
        )
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "distributed_train.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
