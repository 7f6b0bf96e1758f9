"""Benchmark RFT sampling constrained to a ``response_format`` JSON schema against unconstrained sampling.

The lean sampler (``training.lean_rollouts``) draws ``--rows`` answers (groups of 4 rows per prompt) of at most
``--max-new-tokens`` tokens from a policy with a random LoRA, in ``--repeats`` interleaved rounds:
  (a) unconstrained — what a run without ``response_format`` does (the floor);
  (b) constrained to the schema below (``training.constrained``: llguidance matchers, one per row).
Reported: milliseconds per decode step (a step draws one token for every row; a round's seconds over its
steps) for both, the share of (b)'s step spent computing and applying the masks, and how many answers parse.
(a) runs to the budget (random weights never stop), (b) stops once every row has written its JSON, so the
comparison is per step, not per round.

    PYTHONPATH=src .venv/bin/python bench/rft_constrained.py                       # the tiny random model
    PYTHONPATH=src .venv/bin/python bench/rft_constrained.py --model ~/.cache/tunery-bench/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.graders import ResponseFormat
from tunery.training import constrained as constrained_module
from tunery.training.constrained import SchemaConstraint
from tunery.training.lean_rollouts import LeanSampler
from tunery.training.loop import load_base_model
from tunery.training.lora import add_adapter
from tunery.training.packing import use_varlen_attention
from tunery.training.spec import LoraSpec

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 999},
        "reasoning": {"type": "string", "maxLength": 40},
        "confident": {"type": "boolean"},
    },
    "required": ["reasoning", "answer", "confident"],
    "additionalProperties": False,
}
QUESTIONS = ["What is 12 times 7?", "Name the capital of France.", "How many legs has a spider?", "Is 91 prime?"]


class MaskClock:
    """Times ``ConstrainedRows.mask`` (matcher masks + applying them) while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = constrained_module.ConstrainedRows.mask

    def __enter__(self) -> MaskClock:
        real = self._real

        def timed(rows: Any, logits: torch.Tensor, done: Any) -> torch.Tensor:
            started = time.perf_counter()
            try:
                return real(rows, logits, done)
            finally:
                self.seconds += time.perf_counter() - started

        constrained_module.ConstrainedRows.mask = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        constrained_module.ConstrainedRows.mask = self._real  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a Hugging Face model folder (default: the tiny random model)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            from tunery.testing.tiny_model import build_tiny_model

            model_dir = build_tiny_model(Path(scratch) / "tiny")
        run(model_dir, args)


def run(model_dir: Path, args: argparse.Namespace) -> None:
    tokenizer = ChatTokenizer.from_dir(model_dir)
    stops = tokenizer.stop_token_ids
    started = time.perf_counter()
    constraint = SchemaConstraint.compile(SCHEMA, tokenizer, stops)
    compile_s = time.perf_counter() - started
    assert constraint is not None
    torch.manual_seed(0)
    base = load_base_model(model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    policy = add_adapter(base, LoraSpec(r=8, alpha=16))
    sampler = LeanSampler.build(model_dir, torch.float32, torch.device("cpu"))
    assert sampler is not None
    rendered = [
        tokenizer.encode(tokenizer.render([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in QUESTIONS
    ]
    rows = [rendered[(i // 4) % len(rendered)] for i in range(args.rows)]
    check = ResponseFormat(SCHEMA)
    per_step: dict[str, list[float]] = {"free": [], "schema": []}
    mask_share: list[float] = []
    mask_ms: list[float] = []
    parsed: list[float] = []
    sampler.sample(policy, rows[:4], max_new_tokens=4, stop_ids=stops)  # warm-up
    for _ in range(args.repeats):
        for kind in ("free", "schema"):
            torch.manual_seed(1)
            with MaskClock() as clock:
                began = time.perf_counter()
                got = sampler.sample(
                    policy, rows, max_new_tokens=args.max_new_tokens, stop_ids=stops, temperature=1.0,
                    constraint=constraint if kind == "schema" else None,
                )  # fmt: skip
                seconds = time.perf_counter() - began
            assert got is not None
            steps = max(len(c.tokens) for c in got)
            per_step[kind].append(seconds / steps * 1e3)
            if kind == "schema":
                mask_share.append(clock.seconds / seconds)
                mask_ms.append(clock.seconds / steps * 1e3)
                texts = [tokenizer.decode([t for t in c.tokens if t not in stops]) for c in got]
                parsed.append(sum(check.violation(t) is None for t in texts) / len(texts))

    def show(values: list[float]) -> str:
        return f"{statistics.median(values):7.2f} (min {min(values):.2f}, max {max(values):.2f})"

    print(f"model {model_dir.name}, vocabulary {tokenizer.vocab_size}, {args.rows} rows, torch threads "
          f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}")  # fmt: skip
    print(f"schema compiled in {compile_s * 1e3:.1f} ms")
    print(f"ms per decode step, unconstrained: {show(per_step['free'])}")
    print(f"ms per decode step, constrained:   {show(per_step['schema'])}")
    print(f"ms per constrained step in the masks: {show(mask_ms)}")
    print(f"share of a constrained step in the masks: {statistics.median(mask_share):.1%}")
    print(f"constrained answers that parse and match: {statistics.median(parsed):.0%}")


if __name__ == "__main__":
    main()
