"""RFT throughput: Tunery's GRPO (``loop.run`` with ``method="reinforcement"``) against TRL ``GRPOTrainer`` + PEFT.

Same base model, prompts, reward, group size, answer length and sampling temperature, side by side in one run;
each trainer in its own subprocess (so its peak RSS is its own). Both: LoRA r=16/alpha=32 on attention + MLP
projections, ``batch`` prompts a step with ``group`` answers each, answers of at most ``new_tokens`` tokens,
temperature 1, KL beta 0.04 against the base model (adapter disabled), GRPO's per-answer mean loss
(TRL ``loss_type="grpo"``, rewards scaled within each group), one optimizer step per batch of samples. Both run
in the same precision: ``--dtype auto`` (the default) measures it on the machine the way Tunery's dtype "auto"
does (``tunery.hardware.precision``): bf16 autocast where the CPU is fast at it (TRL ``bf16=True``), else fp32.

Reward (the same function for both): the share of the answer's characters that are the letter "e". TRL calls
it in-process; Tunery grades through its product path, a ``python`` grader in the sandbox (``graders``), so
grading costs are included for Tunery and nearly nil for TRL.

Reported per trainer: prompts/s and samples/s over the training steps, both as wall-clock time around the same
span: from the moment the trainer is ready to train (TRL: ``on_train_begin``; Tunery: its ``started`` progress
record, written after the model is loaded, the data tokenized and the step-0 validation done) to the end of its
last optimizer step (TRL: ``on_train_end``; Tunery: its last ``step`` record, less the final validation that
record also covers, which TRL does not run). Model loading and tokenizing are left out for both. Also: the share
of that time spent generating (Tunery: its per-step ``sampling_s``, with ``grading_s`` apart; TRL: a timer
around ``generate``), peak RSS, and the mean training reward of the last steps. The machine may be shared: say
so with the numbers.

Run::

    PYTHONPATH=src .venv/bin/python bench/rft_throughput.py --model tiny --steps 4      # a quick look (~1 min)
    PYTHONPATH=src .venv/bin/python bench/rft_throughput.py --model smollm2 --steps 8   # SmolLM2-135M
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "rft_throughput"
WORDS = ["capital", "France", "Paris", "Rome", "hello", "help", "today", "weather", "river", "green", "seven"]
E_SHARE_SOURCE = "def grade(sample, item):\n    t = sample['output_text']\n    return t.count('e') / max(len(t), 1)\n"


def e_share(text: str) -> float:
    return text.count("e") / max(len(text), 1)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def model_dir(name: str, folder: Path) -> Path:
    if name == "tiny":
        from tunery.testing.tiny_model import build_tiny_model

        return build_tiny_model(folder / "tiny")
    from tunery.catalog import BUNDLED_MODELS
    from tunery.catalog.materialize import prepare

    return prepare(BUNDLED_MODELS[0], Path.home() / ".cache" / "tunery-bench", "all")


def prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"messages": [{"role": "user", "content": "Write about: " + " ".join(rng.choices(WORDS, k=5))}], "target": "e"}
        for _ in range(n)
    ]


# --------------------------------------------------------------------------------------------- workers
def run_tunery(job: dict[str, Any]) -> dict[str, Any]:
    from tunery.training.loop import run
    from tunery.training.progress import ProgressKind, ProgressReader, ProgressWriter
    from tunery.training.spec import LoraSpec, TrainingSpec

    work = Path(job["work"])
    train = work / "train.jsonl"
    valid = work / "valid.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in prompts(job["batch"] * job["steps"])))
    valid.write_text("".join(json.dumps(r) + "\n" for r in prompts(2, seed=1)))
    run_dir = work / "tunery-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec(
        job_id="ftjob-bench",
        run_dir=str(run_dir),
        base_model_dir=job["model_dir"],
        train_file=str(train),
        validation_file=str(valid),
        method="reinforcement",
        n_epochs=1,
        batch_size=job["batch"],
        learning_rate=job["lr"],
        seed=0,
        lora=LoraSpec(r=16, alpha=32),
        max_seq_len=1024,
        num_threads=job["threads"],
        dtype=job["dtype"],
        grader={"type": "python", "name": "e_share", "source": E_SHARE_SOURCE},
        rft_group_size=job["group"],
        rft_eval_samples=1,
        rft_eval_interval=10_000,  # only the final evaluation (on 2 prompts): the steps are what is timed
        rft_max_new_tokens=job["new_tokens"],
        rft_temperature=1.0,
        rft_kl_beta=0.04,
    )
    run(spec, ProgressWriter(run_dir))
    records = ProgressReader(run_dir).read_new()
    started = next(r for r in records if r.kind is ProgressKind.STARTED)
    step_records = [r for r in records if r.kind is ProgressKind.STEP]
    steps = [r.data for r in step_records]
    # Wall clock from "ready to train" to the end of the last optimizer step, as TRL's train begin → end; the
    # last step's record comes after the final validation (TRL runs none), whose own timers are taken off.
    final_eval = steps[-1].get("valid_sampling_s", 0.0) + steps[-1].get("valid_grading_s", 0.0)
    total = step_records[-1].time - started.time - final_eval
    sampling = sum(s["train_sampling_s"] for s in steps)
    grading = sum(s["train_grading_s"] for s in steps)
    return {
        "trainer": "tunery",
        "steps": len(steps),
        "seconds": total,
        "generation_share": sampling / total,
        "grading_share": grading / total,
        "last_rewards": [s["train_reward_mean"] for s in steps[-2:]],
        "completion_tokens_mean": statistics.mean(s["train_reasoning_tokens_mean"] for s in steps),
        "peak_rss_mb": peak_rss_mb(),
        "dtype": job["dtype"],
    }


def run_trl(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(job["threads"])
    timer = {"generate": 0.0}
    original = transformers.GenerationMixin.generate

    def timed_generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timer["generate"] += time.perf_counter() - started

    transformers.GenerationMixin.generate = timed_generate  # type: ignore[method-assign]

    def reward(completions: list[Any], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [e_share(t) for t in texts]

    rows = prompts(job["batch"] * job["steps"])
    dataset = Dataset.from_list([{"prompt": r["messages"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(Path(job["work"]) / "trl-out"),
        per_device_train_batch_size=job["batch"] * job["group"],
        num_generations=job["group"],
        max_completion_length=job["new_tokens"],
        temperature=1.0,
        beta=0.04,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=job["lr"],
        lr_scheduler_type="linear",
        num_train_epochs=1,
        max_steps=job["steps"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=job["dtype"] == "bf16",
        seed=0,
        gradient_checkpointing=False,
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks["start"] = time.perf_counter()
            timer["generate"] = 0.0

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            marks["end"] = time.perf_counter()

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.train()
    seconds = marks["end"] - marks["start"]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "trainer": "trl",
        "steps": job["steps"],
        "seconds": seconds,
        "generation_share": timer["generate"] / seconds,
        "grading_share": None,
        "last_rewards": rewards[-2:],
        "completion_tokens_mean": statistics.mean(
            h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
        ),
        "peak_rss_mb": peak_rss_mb(),
        "dtype": job["dtype"],
    }


def measured_dtype(choice: str) -> str:
    """``auto``: the autocast format Tunery's own probe measures fastest here; else the choice."""
    if choice != "auto":
        return choice
    from tunery.hardware.precision import fastest_format

    return fastest_format("autocast")


# --------------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="answers per prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="both trainers' precision")
    parser.add_argument("--trainers", nargs="+", default=["tunery", "trl"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        result = run_tunery(job) if job["trainer"] == "tunery" else run_trl(job)
        print("RESULT " + json.dumps(result))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rft-bench-") as tmp:
        folder = Path(tmp)
        base = model_dir(args.model, folder)
        dtype = measured_dtype(args.dtype)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.trainers}
        for repeat in range(args.repeats):
            for name in args.trainers:
                work = folder / f"{name}-{repeat}"
                work.mkdir()
                job = {
                    "trainer": name, "work": str(work), "model_dir": str(base), "steps": args.steps,
                    "batch": args.batch, "group": args.group, "new_tokens": args.new_tokens, "lr": args.lr,
                    "threads": args.threads, "dtype": dtype,
                }  # fmt: skip
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
                )
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
                results[name].append(json.loads(line[7:]))
    print(f"CPU: {cpu_name()}; {dtype}; model {args.model}; {args.steps} steps × {args.batch} prompts × "
          f"{args.group} answers")  # fmt: skip
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        prompts_s = [r["steps"] * args.batch / r["seconds"] for r in runs]
        summary[name] = {
            "prompts_per_s_median": statistics.median(prompts_s),
            "prompts_per_s_spread": [min(prompts_s), max(prompts_s)],
            "samples_per_s_median": statistics.median(prompts_s) * args.group,
            "generation_share": statistics.median(r["generation_share"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "last_rewards": runs[-1]["last_rewards"],
            "completion_tokens_mean": runs[-1]["completion_tokens_mean"],
            "grading_share": runs[-1]["grading_share"],
        }
        s = summary[name]
        print(
            f"{name:7s} {s['prompts_per_s_median']:.3f} prompts/s ({s['samples_per_s_median']:.2f} samples/s), "
            f"generation {s['generation_share']:.0%} of step time (grading {s['grading_share'] or 0:.0%}), "
            f"{s['completion_tokens_mean']:.1f} tokens/answer, peak RSS {s['peak_rss_mb']:.0f} MB, "
            f"last train rewards {[round(x, 3) for x in s['last_rewards']]}"
        )
    if {"tunery", "trl"} <= set(summary):
        ratio = summary["tunery"]["prompts_per_s_median"] / summary["trl"]["prompts_per_s_median"]
        print(f"Tunery / TRL: {ratio:.2f}x prompts/s")
        summary["ratio_prompts_per_s"] = {"tunery_over_trl": ratio}
    report = {"args": vars(args), "dtype": dtype, "summary": summary}
    (OUT / f"results-{args.model}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
