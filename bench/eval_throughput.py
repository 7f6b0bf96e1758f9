"""Benchmark the eval runner on SmolLM2-135M: items/s of a string_check eval vs. the same completions one at a time.

Side by side, in one process, on the same ``HFEngine`` (the engine ``tunery serve`` builds):

(a) Tunery's eval runner: one eval run over ``--items`` items (a ``completions`` data source with a template,
    greedy, ``--max-tokens`` tokens each), executed by ``EvalRunExecutor`` — items go to the engine
    ``--batch-size`` at a time so they share decode steps, then each is graded by a ``string_check``;
(b) what a user does without it: the same completions one request at a time through the chat service (the
    code behind ``POST /chat/completions``), then the same check in Python. To keep the script's wall time
    bounded, (b) times the first ``--sequential-items`` items; its items/s is what one-at-a-time gets.

``--rounds`` interleaves (a) and (b) (a, b, a, b, ...) so load from other processes hits both alike; the table
reports the median and spread of items/s and the median of same-round ratios. The model is prepared into
``bench/out/eval_bench/models`` on first use; results also go to ``bench/out/eval_throughput.json``.

    PYTHONPATH=src .venv/bin/python bench/eval_throughput.py                 # 500 items, 3 rounds
    PYTHONPATH=src .venv/bin/python bench/eval_throughput.py --quick         # a short try on a busy machine
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from tunery.api.schemas.chat import ChatCompletionRequest
from tunery.bootstrap import build_eval_executor, build_services, prepare_base_model
from tunery.config import EvalsSettings, InferenceSettings, Settings
from tunery.services.chat import ChatRequest, Completion
from tunery.services.eval_requests import CreateEvalRequest, CreateEvalRunRequest

OUT_DIR = Path(__file__).resolve().parent / "out"
MODEL = "SmolLM2-135M-Instruct"
ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
               "required": ["question", "answer"]}  # fmt: skip
CRITERION = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "like"}  # fmt: skip
TEMPLATE = [{"role": "system", "content": "Answer with the number only."},
            {"role": "user", "content": "{{item.question}}"}]  # fmt: skip


def items(n: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        rows.append({"item": {"question": f"What is {a} + {b}?", "answer": str(a + b)}})
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _chat(body: dict[str, Any]) -> ChatRequest:
    """A body parsed as ``POST /chat/completions`` parses it."""
    return ChatCompletionRequest.model_validate(body).to_domain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--sequential-items", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="items in the engine at once (eval runner)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="64 items, 16 sequential, 8 tokens, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.items, args.sequential_items, args.max_tokens, args.rounds = 64, 16, 8, 1

    settings = Settings(
        data_dir=OUT_DIR / "eval_bench",
        inference=InferenceSettings(max_batch_size=args.batch_size, num_threads=args.threads),
        evals=EvalsSettings(batch_size=args.batch_size, max_items_per_run=max(args.items, 5000)),
    )
    prepare_base_model(settings, MODEL, weights=True)  # once: GGUF -> safetensors in the bench's model cache
    services = build_services(settings, background_checks=False)
    project = services.keys.authenticate(services.keys.create("bench").secret).project_id
    executor = build_eval_executor(settings, services)
    rows = items(args.items)
    ev = services.evals.create(project, CreateEvalRequest.model_validate(
        {"name": "bench", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
         "testing_criteria": [CRITERION]}))  # fmt: skip
    sampling = {"temperature": 0, "max_completion_tokens": args.max_tokens, "seed": 42}
    hello = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    services.chat.create(project, _chat(hello))

    runner_rates: list[float] = []
    sequential_rates: list[float] = []
    passed: dict[str, int] = {}
    for round_ in range(args.rounds):
        request = CreateEvalRunRequest.model_validate({"name": f"round {round_}", "data_source": {
            "type": "completions", "model": MODEL, "sampling_params": sampling,
            "input_messages": {"type": "template", "template": TEMPLATE},
            "source": {"type": "file_content", "content": rows}}})  # fmt: skip
        run = services.evals.create_run(project, ev.id, request)
        started = time.perf_counter()
        while executor.run_next("bench", stale_after=3600):
            pass
        elapsed = time.perf_counter() - started
        done = services.evals.retrieve_run(project, ev.id, run.id)
        assert done.status.value == "completed", done.error
        runner_rates.append(done.result_counts["total"] / elapsed)
        passed["runner"] = done.result_counts["passed"]

        started = time.perf_counter()
        ok = 0
        for row in rows[: args.sequential_items]:
            item = row["item"]
            messages = [
                {"role": "system", "content": TEMPLATE[0]["content"]},
                {"role": "user", "content": item["question"]},
            ]
            answer = services.chat.create(project, _chat({"model": MODEL, "messages": messages, "temperature": 0,
                                                          "max_tokens": args.max_tokens, "seed": 42}))  # fmt: skip
            assert isinstance(answer, Completion)
            ok += item["answer"] in answer.texts[0]
        elapsed = time.perf_counter() - started
        sequential_rates.append(args.sequential_items / elapsed)
        passed["sequential"] = ok
        print(f"round {round_ + 1}: eval runner {runner_rates[-1]:.2f} items/s · one at a time "
              f"{sequential_rates[-1]:.2f} items/s · ratio {runner_rates[-1] / sequential_rates[-1]:.2f}x")  # fmt: skip

    ratios = [a / b for a, b in zip(runner_rates, sequential_rates, strict=True)]
    result = {
        "cpu": cpu_model(), "items": args.items, "sequential_items": args.sequential_items,
        "max_tokens": args.max_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
        "threads": args.threads, "runner_items_per_s": runner_rates, "sequential_items_per_s": sequential_rates,
        "median_ratio": statistics.median(ratios), "passed": passed,
    }  # fmt: skip
    print()
    print(f"CPU: {result['cpu']}; {args.items} items, {args.max_tokens} tokens each, batch {args.batch_size}")
    print("| scenario | items/s (median) | spread (min-max) |")
    print("|---|---:|---:|")
    for label, rates in (("eval runner (batched)", runner_rates), ("chat, one at a time", sequential_rates)):
        print(f"| {label} | {statistics.median(rates):.2f} | {min(rates):.2f}-{max(rates):.2f} |")
    print(f"\nmedian same-round ratio: {result['median_ratio']:.2f}x (target >= 4x)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "eval_throughput.json").write_text(json.dumps(result, indent=2))
    services.close()


if __name__ == "__main__":
    main()
