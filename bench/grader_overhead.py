"""Benchmark the graders: the python sandbox's cost per item after warm-up, and string/text grader throughput.

Python grader (target: the sandbox costs < 20 ms per item after warm-up), one trivial ``grade`` that
returns ``len(output_text) / 10``, timed per item over ``--items`` items in ``--rounds`` interleaved rounds:
  (a) in-process call of ``grade`` — no isolation at all, the floor;
  (b) Tunery's warm pool (``run_grader`` with a ``PythonSandbox``): one fork, rlimits, audit hook and
      two pipe messages per item;
  (c) what a careful user would write without a pool: a fresh ``python -I -c`` process per item
      (``subprocess.run`` with a timeout), the usual way to isolate untrusted code.
The "overhead" is (b) − (a). Also: (b) with 2 threads sharing a 2-worker pool (items/s).

String / text graders: items/s of ``run_grader`` for string_check and each text_similarity metric on
``--items`` generated (answer, reference) pairs of 5–40 words, beside the bare library call for fuzzy_match
(rapidfuzz) so the wrapper's own cost (templates, result model) shows.

    PYTHONPATH=src .venv/bin/python bench/grader_overhead.py            # ~1 min on 2 busy vCPUs
    PYTHONPATH=src .venv/bin/python bench/grader_overhead.py --quick    # a few seconds, to try it out
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunery.graders import PythonSandbox, SandboxLimits, parse_grader, run_grader, sample_from_text

SOURCE = "def grade(sample, item):\n    return len(sample['output_text']) / 10\n"
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "table",
    "quickly",
    "slowly",
    "red",
    "blue",
    "big",
    "small",
    "house",
    "river",
    "city",
    "tree",
]
OUT = Path(__file__).with_name("out")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def per_item_ms(run: Callable[[int], Any], items: int) -> list[float]:
    times = []
    for i in range(items):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "spread_ms": ordered[int(0.9 * len(ordered))] - ordered[int(0.1 * len(ordered))],
    }


def bench_python(items: int, rounds: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(SOURCE, namespace)
    grade = namespace["grade"]
    sandbox = PythonSandbox(SandboxLimits(wall_seconds=10, cpu_seconds=10, workers=2))
    grader = parse_grader({"type": "python", "name": "bench", "source": SOURCE})
    samples = [sample_from_text("x" * (i % 20)) for i in range(items)]

    started = time.perf_counter()
    sandbox.warm()
    warm_s = time.perf_counter() - started
    for _ in range(5):  # warm-up: compile cache, page cache
        run_grader(grader, sample=samples[0], item={}, sandbox=sandbox)

    def pool(i: int) -> None:
        result = run_grader(grader, sample=samples[i], item={}, sandbox=sandbox)
        assert not result.errored
        assert result.reward == len(samples[i]["output_text"]) / 10

    def fresh(i: int) -> None:
        code = SOURCE + "import json,sys\nprint(grade(json.loads(sys.argv[1]), {}))\n"
        out = subprocess.run(
            [sys.executable, "-I", "-c", code, json.dumps(samples[i])], capture_output=True, text=True, timeout=30
        )
        assert float(out.stdout) == len(samples[i]["output_text"]) / 10

    results: dict[str, list[float]] = {"in_process": [], "tunery_pool": [], "fresh_process": []}
    fresh_items = max(5, items // 10)  # ~20x slower; fewer items keep the run short
    for _ in range(rounds):
        results["in_process"] += per_item_ms(lambda i: grade(samples[i], {}), items)
        results["tunery_pool"] += per_item_ms(pool, items)
        results["fresh_process"] += per_item_ms(fresh, fresh_items)

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(pool, [i % items for i in range(items * rounds)]))
    parallel_items_s = items * rounds / (time.perf_counter() - started)
    sandbox.close()

    table = {name: summary(times) for name, times in results.items()}
    overhead = table["tunery_pool"]["median_ms"] - table["in_process"]["median_ms"]
    return {
        "pool_start_s": warm_s,
        "per_item": table,
        "overhead_median_ms": overhead,
        "target_met": overhead < 20.0,
        "pool_2_threads_items_per_s": parallel_items_s,
    }


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))


def bench_text(items: int) -> dict[str, Any]:
    rng = random.Random(0)
    pairs = [(sentence(rng), sentence(rng)) for _ in range(items)]
    graders: dict[str, dict[str, Any]] = {
        "string_check (ilike)": {"type": "string_check", "operation": "ilike"},
        **{
            f"text_similarity ({m})": {"type": "text_similarity", "evaluation_metric": m}
            for m in ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_l")
        },
    }
    out: dict[str, Any] = {}
    for label, fields in graders.items():
        grader = parse_grader(
            {"name": "g", "input": "{{sample.output_text}}", "reference": "{{item.reference}}", **fields}
        )
        run_grader(grader, sample=sample_from_text(pairs[0][0]), item={"reference": pairs[0][1]})  # imports
        started = time.perf_counter()
        for answer, reference in pairs:
            run_grader(grader, sample=sample_from_text(answer, parse_json=False), item={"reference": reference})
        out[label] = items / (time.perf_counter() - started)
    from rapidfuzz import fuzz, utils

    started = time.perf_counter()
    for answer, reference in pairs:
        fuzz.WRatio(answer, reference, processor=utils.default_process)
    out["bare rapidfuzz WRatio (no grader)"] = items / (time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="python-grader items per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--text-items", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a few seconds: 40 items, 1 round, 300 text items")
    args = parser.parse_args()
    if args.quick:
        args.items, args.rounds, args.text_items = 40, 1, 300
    report = {
        "machine": f"{cpu_model()}, {platform.python_version()}",
        "python_grader": bench_python(args.items, args.rounds),
        "text_graders_items_per_s": bench_text(args.text_items),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "grader_overhead.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
