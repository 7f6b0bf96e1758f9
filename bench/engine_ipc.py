"""Benchmark what running the engine in its own process costs per token (``inference.isolation``).

Two measurements, each in ``--rounds`` interleaved rounds (median and spread reported):
  (a) the pipe alone: a torch-free engine that yields ``--tokens`` one-token chunks as fast as it can, consumed
      in-process (a plain generator, the floor) and through ``EngineProcess`` (pickle, pipe, reader thread,
      caller queue); with 1 stream and with ``--streams`` concurrent streams. The difference per chunk is the
      added per-token cost.
  (b) the real engine on the tiny test model (2 layers; a decode step is ~1-3 ms, far shorter than a real
      model's, so the relative cost shown is an upper bound): ``HFEngine`` in-process against the same engine
      through ``EngineProcess``, greedy, 1 stream and ``--streams`` streams, tokens/s.

    PYTHONPATH=src .venv/bin/python bench/engine_ipc.py            # ~1 min on 2 busy vCPUs
    PYTHONPATH=src .venv/bin/python bench/engine_ipc.py --quick    # ~20 s, to try it out
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunery.inference.engine import Engine, GenerationChunk, GenerationRequest, SamplingParams
from tunery.inference.process import EngineProcess, HFEngineOptions

OUT = Path(__file__).with_name("out")


class SpinEngine:
    """Yields ``max_tokens`` one-token chunks with no work in between: only the transport is timed."""

    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        n = request.params.max_tokens
        for i in range(1, n + 1):
            yield GenerationChunk(text=" tok", token_ids=[i], finish_reason="length" if i == n else None,
                                  prompt_tokens=1, completion_tokens=i)  # fmt: skip

    def active_rows(self) -> int:
        return 0

    def generated_tokens(self) -> int:
        return 0

    def close(self) -> None:
        pass


def spin_factory(model_dirs: Callable[[str], Path]) -> SpinEngine:
    return SpinEngine()


def timed_tokens(engine: Engine, requests: list[GenerationRequest]) -> tuple[float, int]:
    """Seconds to stream every request to the end (concurrently), and the tokens received."""

    def consume(request: GenerationRequest) -> int:
        return sum(len(chunk.token_ids) for chunk in engine.generate(request))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        tokens = sum(pool.map(consume, requests))
    return time.perf_counter() - started, tokens


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def pipe_only(rounds: int, tokens: int, streams: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process = EngineProcess({"m": Path(tmp)}.__getitem__, spin_factory)
        inline = SpinEngine()
        for n in (1, streams):
            requests = [GenerationRequest("m", [1], SamplingParams(max_tokens=tokens)) for _ in range(n)]
            timed_tokens(process, requests)  # starts the child
            per_token: dict[str, list[float]] = {"in_process_us": [], "engine_process_us": []}
            for _ in range(rounds):
                for key, engine in (("in_process_us", inline), ("engine_process_us", process)):
                    seconds, count = timed_tokens(engine, requests)
                    per_token[key].append(seconds / count * 1e6)
            results[f"{n}_streams"] = {key: summary(v) for key, v in per_token.items()}
        process.close()
    return results


def real_engine(rounds: int, tokens: int, streams: int) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from tunery.testing.tiny_model import build_tiny_model

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        prompt = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("Tell me a long story.").ids
        options = HFEngineOptions(dtype="float32", num_threads=1)
        inline = options({"tiny": model_dir}.__getitem__)
        process = EngineProcess({"tiny": model_dir}.__getitem__, options)
        for n in (1, streams):
            # min_tokens is not a thing: greedy on the random tiny model usually runs to max_tokens; counted anyway
            requests = [
                GenerationRequest("tiny", list(prompt), SamplingParams(max_tokens=tokens, temperature=0.0))
                for _ in range(n)
            ]
            for engine in (inline, process):
                timed_tokens(engine, requests)  # load the model
            rates: dict[str, list[float]] = {"in_process_tok_s": [], "engine_process_tok_s": []}
            for _ in range(rounds):
                for key, engine in (("in_process_tok_s", inline), ("engine_process_tok_s", process)):
                    seconds, count = timed_tokens(engine, requests)
                    rates[key].append(count / seconds)
            results[f"{n}_streams"] = {key: summary(v) for key, v in rates.items()}
        inline.close()
        process.close()
    return results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=2000, help="chunks per stream for the pipe-only run")
    parser.add_argument("--model-tokens", type=int, default=128, help="tokens per stream for the tiny model")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tokens, args.model_tokens = 3, 500, 48
    report = {
        "cpu": cpu_model(),
        "pipe_only_per_token": pipe_only(args.rounds, args.tokens, args.streams),
        "tiny_model_tokens_per_s": real_engine(args.rounds, args.model_tokens, args.streams),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "engine_ipc.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
