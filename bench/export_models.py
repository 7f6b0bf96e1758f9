"""Benchmark exporting a SmolLM2-135M fine-tune in each format: seconds and peak RSS, against peft's merge.

Each export runs in a fresh child process (so its peak RSS is its own, read from ``VmHWM``): Tunery's
``peft``, ``merged`` and ``gguf`` writers (``tunery.catalog.export``, streamed tensor by tensor from
memory-mapped safetensors), and the baseline a capable user would write for a merged folder:
``PeftModel.from_pretrained(...).merge_and_unload().save_pretrained(...)`` (float32, as the base is stored).
Formats run interleaved over ``--repeats`` rounds; the table gives the median and the spread (min-max).
The fp32 model is ~538 MB on disk; "streamed" means peak RSS well under twice that.

The adapter is a random LoRA r=16 on all attention and MLP projections with non-zero ``B`` (seeded), written
to ``bench/out/export_adapter/``; the model is prepared into ``bench/out/models/`` on first use.

    PYTHONPATH=src .venv/bin/python bench/export_models.py              # 3 rounds, ~3 min on 2 vCPUs
    PYTHONPATH=src .venv/bin/python bench/export_models.py --repeats 1  # to try it out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out"
FORMATS = ("peft", "merged", "gguf", "baseline_merged")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(fmt: str, base_dir: Path, adapter_dir: Path, target: Path) -> dict[str, float]:
    """One export in this (fresh) process; returns seconds and peak RSS."""
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    if fmt == "baseline_merged":
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(target)
    else:
        from tunery.catalog.export import export_model

        export_model(fmt, adapter_dir, base_dir, target, base_id="HuggingFaceTB/SmolLM2-135M-Instruct",  # type: ignore[arg-type]
                     model_name="SmolLM2-135M-Instruct.ft-bench")  # fmt: skip
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "output_mb": size / 1e6}


def prepare_inputs() -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunery.catalog import BUNDLED_MODELS
    from tunery.catalog.materialize import prepare

    base_dir = prepare(BUNDLED_MODELS[0], OUT_DIR / "models", "all")
    adapter_dir = OUT_DIR / "export_adapter"
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
        torch.manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
        peft_model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=FORMATS, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.base, args.adapter, OUT_DIR / "export" / args.one)))
        return

    base_dir, adapter_dir = prepare_inputs()
    model_mb = sum(p.stat().st_size for p in base_dir.glob("*.safetensors")) / 1e6
    results: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in FORMATS}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    for _ in range(args.repeats):
        for fmt in FORMATS:
            command = [sys.executable, __file__, "--one", fmt, "--base", str(base_dir), "--adapter", str(adapter_dir)]
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            results[fmt].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"SmolLM2-135M-Instruct fp32 safetensors: {model_mb:.0f} MB; {args.repeats} round(s); "
          f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| format | seconds (median, min-max) | peak RSS MB (median, min-max) | output MB |")
    print("|---|---|---|---|")
    for fmt, rows in results.items():
        secs = [r["seconds"] for r in rows]
        rss = [r["peak_rss_mb"] for r in rows]
        seconds = f"{statistics.median(secs):.1f} ({min(secs):.1f}-{max(secs):.1f})"
        memory = f"{statistics.median(rss):.0f} ({min(rss):.0f}-{max(rss):.0f})"
        print(f"| {fmt} | {seconds} | {memory} | {rows[0]['output_mb']:.0f} |")
    (OUT_DIR / "export_models.json").write_text(json.dumps({"model_mb": model_mb, "results": results}, indent=2))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return platform.processor()


if __name__ == "__main__":
    main()
