"""Benchmark the dataset checks (``tunery.training.validate_jsonl``) on generated 10 MB and 100 MB chat files.

Generates realistic chat JSONL (mixed-length multi-turn conversations, some with system prompts, weights
and tool calls) into ``bench/out/`` (git-ignored), then checks each file in a fresh subprocess, so the peak
RSS reported is that file's alone: once without a tokenizer, and once with the base model's real tokenizer
(``tunery.catalog.chat_tokenizer.ChatTokenizer``) when ``--tokenizer-dir`` is given and it loads. Prints a
markdown table: size, seconds, MB/s, examples, the process's peak RSS (``VmHWM``) and its RSS just before
the check starts (after imports and loading the tokenizer).

    PYTHONPATH=src .venv/bin/python bench/validate_files.py --tokenizer-dir DIR

A tokenizer folder can be prepared with
``python -m tunery.catalog prepare SmolLM2-135M-Instruct --cache-dir bench/out/models``.
Not a test: about 15 s without a tokenizer (mostly generating the files, which later runs reuse), and
about 70 s more with SmolLM2's tokenizer, on 2 vCPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"
SIZES_MB = (10, 100)
MB = 1_000_000
_VOCABULARY = (
    "the a of to and in is it you that for on with as are this be at or have from by not but what all were "
    "when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who "
    "now people my made over did down only way find use may water long little very after words called "
    "just where most know get through back much before go good new write our used me man too any day "
    "same right look think also around another came come work three word must because does part even "
    "place well such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own under read "
    "last never us left end along while might next sound below saw something thought both few those always "
    "model training data example answer question weather invoice customer refund order shipping account "
    "password reset error server request response latency database query index table column"
)
WORDS = tuple(_VOCABULARY.split())
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a customer support agent for an online shop. Answer politely and briefly.",
    "Marv is a factual chatbot that is also sarcastic.",
    "You are a senior engineer. Explain trade-offs and give concrete commands.",
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
            "required": ["location", "format"],
        },
    },
}


# ------------------------------------------------------------------------------------------ generating
def _text(rng: random.Random, low: int, high: int) -> str:
    """A sentence-ish string of a log-uniform number of words in [low, high]."""
    count = round(low * (high / low) ** rng.random())
    words = rng.choices(WORDS, k=count)
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(".?!")


def _tool_example(rng: random.Random, index: int) -> dict[str, Any]:
    city = rng.choice(("Paris", "Tokyo", "Lima", "Oslo", "Nairobi"))
    call_id = f"call_{index}"
    arguments = json.dumps({"location": city, "format": "celsius"})
    call = {"id": call_id, "type": "function", "function": {"name": "get_current_weather", "arguments": arguments}}
    return {
        "messages": [
            {"role": "user", "content": f"What is the weather in {city}? {_text(rng, 3, 30)}"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": f"{rng.randint(-10, 35)}.0"},
            {"role": "assistant", "content": _text(rng, 8, 120)},
        ],
        "tools": [WEATHER_TOOL],
    }


def _chat_example(rng: random.Random) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.6:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    turns = rng.choice((1, 1, 1, 2, 2, 3, 4))
    weighted = turns > 1 and rng.random() < 0.3
    for turn in range(turns):
        messages.append({"role": "user", "content": _text(rng, 4, 300)})
        reply: dict[str, Any] = {"role": "assistant", "content": _text(rng, 6, 600)}
        if weighted:
            reply["weight"] = 1 if turn == turns - 1 else 0
        messages.append(reply)
    return {"messages": messages}


def generate(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write chat examples to ``path`` until it holds at least ``size_bytes``; return the example count."""
    rng = random.Random(seed)
    written = count = 0
    with path.open("w", encoding="utf-8") as out:
        while written < size_bytes:
            example = _tool_example(rng, count) if rng.random() < 0.05 else _chat_example(rng)
            line = json.dumps(example, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode())
            count += 1
    return count


# ---------------------------------------------------------------------------------------- measuring
def child(path: Path, tokenizer_dir: Path | None) -> None:
    """Run in the subprocess: check one file, print one JSON line with the timings and peak RSS."""
    from tunery.training import validate_jsonl

    tokenizer = None
    if tokenizer_dir is not None:
        from tunery.catalog.chat_tokenizer import ChatTokenizer

        tokenizer = ChatTokenizer.from_dir(tokenizer_dir)
    rss_before_mb = _rss_mb("VmRSS")
    started = time.perf_counter()
    with path.open("rb") as stream:
        report = validate_jsonl(stream, tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "examples": report.examples,
        "problems": report.problem_count,
        "rss_before_mb": rss_before_mb,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "tokens": report.stats.tokens_total if report.stats else None,
    }
    print(json.dumps(result))


def _rss_mb(field: str) -> float:
    """This process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MB.

    Read from /proc rather than ``getrusage``: Linux carries the parent's peak into ``ru_maxrss`` across
    fork and exec, so a child started by a big parent would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux units (KiB); a fallback


def measure(path: Path, tokenizer_dir: Path | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(path)]
    if tokenizer_dir is not None:
        command += ["--tokenizer-dir", str(tokenizer_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def tokenizer_status(tokenizer_dir: Path | None) -> str | None:
    """``None`` when the tokenizer row can run; otherwise why it is skipped."""
    if tokenizer_dir is None:
        return "no --tokenizer-dir given"
    try:
        from tunery.catalog.chat_tokenizer import ChatTokenizer
    except ImportError as exc:
        return f"tunery.catalog.chat_tokenizer is not importable ({exc})"
    try:
        ChatTokenizer.from_dir(tokenizer_dir)
    except (OSError, ValueError) as exc:
        return f"the tokenizer in {tokenizer_dir} does not load ({exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_MB), help="file sizes in MB")
    parser.add_argument("--tokenizer-dir", type=Path, help="a Hugging Face tokenizer folder for the 2nd row")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the generated files go")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.tokenizer_dir)
        return 0

    args.out_dir.mkdir(parents=True, exist_ok=True)
    skip_reason = tokenizer_status(args.tokenizer_dir)
    modes: list[tuple[str, Path | None]] = [("none", None)]
    if skip_reason is None:
        modes.append(("ChatTokenizer", args.tokenizer_dir))
    rows = []
    for size in args.sizes:
        path = args.out_dir / f"chat_{size}mb.jsonl"
        if not path.exists() or path.stat().st_size < size * MB:
            print(f"generating {path} ...", file=sys.stderr)
            generate(path, size * MB)
        actual_mb = path.stat().st_size / MB
        for label, directory in modes:
            print(f"checking {path.name} (tokenizer: {label}) ...", file=sys.stderr)
            rows.append((actual_mb, label, measure(path, directory)))

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s)\n")
    print("| file | tokenizer | examples | problems | seconds | MB/s | peak RSS MB | RSS before checking MB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for actual_mb, label, r in rows:
        print(
            f"| {actual_mb:.0f} MB | {label} | {r['examples']:,} | {r['problems']:,} | {r['seconds']:.2f} | "
            f"{actual_mb / r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |"
        )
    if skip_reason:
        print(f"\nTokenizer rows skipped: {skip_reason}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
