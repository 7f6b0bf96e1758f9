"""Reinforcement fine-tuning's objective: GRPO on the LoRA adapter, with rewards from the job's grader.

A step takes ``batch_size`` prompts (``read_prompts``: an RFT file's messages, rendered with the generation
prompt; the whole row is the grader's ``item``), samples ``group_size`` answers for each in one batch with a KV
cache (``lean_rollouts.LeanSampler``: the engine's lean forward on a copy of the base model with the policy's
LoRA; ``rollouts.sample_completions`` on the trainer's own model where that cannot run), grades them
(``Rewarder``: the ``graders`` package, python graders in its sandbox, ``concurrency`` at a time) and takes one
optimizer step on the GRPO loss:

* advantages are group-normalised: ``(r - mean(group)) / (std(group) + 1e-4)`` (population std), so a
  prompt whose answers all score the same teaches nothing;
* per answer token ``t``: ``-min(ρ_t A, clip(ρ_t, 1-ε, 1+ε) A) + β·KL_t`` with ``ρ_t = π(t) / π_old(t)`` and
  the k3 estimator ``KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1`` against the model the run starts
  from; averaged over each answer's tokens, then over the step's answers (GRPO's sequence-mean). One
  optimizer step per batch of samples, so ``π_old`` is the policy itself (ρ = 1, the clip only matters for
  the formula's gradient) — what TRL's ``GRPOTrainer`` does with its default ``num_iterations=1``.
* the reference is the starting model without a second copy of its weights: the base model with the adapter
  disabled, or for continuous fine-tuning the parent adapter, loaded as a second (frozen, small) adapter.

The answers are packed flat as prompt trees (``packing.collate_trees``: a group's answers share one reading of
their prompt, each answer token getting the logits it would get alone) and the LM head runs only on answer
tokens (``head``), as for SFT and DPO. Evaluation samples ``eval_samples`` answers for every validation prompt
and averages their rewards; ``graded`` then holds every answer with its grade (one record per answer), which
the loop writes to the run folder and the worker records as a run of the job's eval (``services.rft_evals``).
A grading that fails (a raising python grader...) scores 0 and is counted; a round where every sample failed,
or ``MAX_BAD_STEPS`` steps in a row where more than half failed, ends the job (``GraderFailure``). With a
``response_format``, sampling is constrained to its JSON schema (``constraint``: ``training.constrained``; the
loss keeps the model's own, unmasked log-probabilities, see there), and an answer that still is not JSON
matching it (cut off at ``max_new_tokens``...) scores 0 as a ``sample_parse_error`` without reaching the
grader (``graders.response_format``); parse errors are the policy's, never the grader's, so they do not count
towards ending the job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.domain.errors import InvalidRequest
from tunery.graders import (
    GraderResult,
    Judge,
    PythonSandbox,
    ResponseFormat,
    SandboxLimits,
    parse_failure,
    parse_grader,
    run_grader,
    sample_from_text,
)
from tunery.graders.result import ERROR_KINDS
from tunery.training.constrained import SchemaConstraint
from tunery.training.examples import IGNORE_INDEX, Example, InvalidTrainingData, chat_tools, records
from tunery.training.head import head_log_probs, head_weight, trained_hidden
from tunery.training.lean_rollouts import LeanSampler
from tunery.training.packing import PackedBatch, collate_rows, collate_trees
from tunery.training.rollouts import sample_completions

if TYPE_CHECKING:
    from tunery.training.loop import Setup

log = logging.getLogger(__name__)

REFERENCE_ADAPTER = "reference"
ADV_EPSILON = 1e-4
MAX_BAD_STEPS = 3  # steps in a row with more than half the gradings failed before the job fails
BAD_SHARE = 0.5
MAX_REASONS = 5


class GraderFailure(RuntimeError):
    """Too many gradings failed (shown to the user as ``grader_error``, with up to five reasons)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """One RFT row: the prompt's token ids (generation prompt included) and the row itself for the grader."""

    input_ids: list[int]
    item: dict[str, Any]
    line: int

    def __len__(self) -> int:
        return len(self.input_ids)


def read_prompts(path: Path, tokenizer: ChatTokenizer, max_seq_len: int, max_new_tokens: int) -> list[Prompt]:
    """Render and tokenize every prompt of an RFT file, in file order.

    Raises:
        InvalidTrainingData: a line cannot be rendered, or its prompt leaves no room for an answer.
    """
    prompts: list[Prompt] = []
    for number, record in records(path):
        try:
            text = tokenizer.render(record["messages"], chat_tools(record), add_generation_prompt=True)
        except (InvalidRequest, KeyError, TypeError) as exc:
            detail = exc.message if isinstance(exc, InvalidRequest) else f"not a reinforcement example ({exc!r})"
            raise InvalidTrainingData(f"{path.name} line {number}: {detail}") from exc
        ids = tokenizer.encode(text)
        if len(ids) + max_new_tokens > max_seq_len:
            raise InvalidTrainingData(
                f"{path.name} line {number}: the prompt has {len(ids)} tokens; with room for a {max_new_tokens}-token "
                f"answer that is more than the {max_seq_len} tokens a sequence may have."
            )
        prompts.append(Prompt(input_ids=ids, item=record, line=number))
    if not prompts:
        raise InvalidTrainingData(f"{path.name} holds no prompts.")
    return prompts


@dataclass(frozen=True, slots=True)
class GrpoSettings:
    group_size: int
    eval_samples: int
    max_new_tokens: int
    stop_ids: tuple[int, ...]
    temperature: float = 1.0
    kl_beta: float = 0.04
    clip_epsilon: float = 0.2
    max_grad_norm: float = 1.0
    parse_json: bool = True  # the grader's sample gets output_json when the answer parses
    lean_sampling: bool = True  # sample with the engine's lean forward (``lean_rollouts``) where it can run


# --------------------------------------------------------------------------------------------- math
def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``(prompts, group)`` rewards → advantages: each reward minus its group's mean, over the group's std."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + ADV_EPSILON)


def grpo_token_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_epsilon: float,
    kl_beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (loss, KL) for answer tokens; every argument is one value per token (the answer's advantage
    repeated over its tokens)."""
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)
    delta = ref_log_probs - log_probs
    kl = torch.exp(delta) - delta - 1
    return -surrogate + kl_beta * kl, kl


def sequence_means(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """The mean of each consecutive run of ``lengths`` values: one per answer."""
    return torch.stack([chunk.mean() for chunk in values.split(list(lengths))])


# --------------------------------------------------------------------------------------------- grading
class Rewarder:
    """Grades answers with the job's grader, ``concurrency`` at a time; python graders run in a sandbox."""

    def __init__(
        self,
        raw_grader: dict[str, Any],
        *,
        concurrency: int,
        parse_json: bool,
        response_schema: dict[str, Any] | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.grader = parse_grader(raw_grader, param="method.reinforcement.grader")
        self.judge = judge  # model graders ask it (the worker's judge relay, through ``training.remote_judge``)
        self.parse_json = parse_json
        self.response_format = ResponseFormat(response_schema) if response_schema is not None else None
        self.concurrency = max(1, concurrency)
        self._sandbox: PythonSandbox | None = None
        if _uses_python(raw_grader):
            self._sandbox = PythonSandbox(SandboxLimits(workers=self.concurrency))
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="grader")

    def grade(self, texts: Sequence[str], items: Sequence[dict[str, Any]]) -> list[GraderResult]:
        def one(pair: tuple[str, dict[str, Any]]) -> GraderResult:
            text, item = pair
            if self.response_format is not None and (why := self.response_format.violation(text)) is not None:
                return parse_failure(self.grader, why)  # the policy's fault: 0, and not a grader failure
            sample = sample_from_text(text, parse_json=self.parse_json)
            return run_grader(self.grader, sample=sample, item=item, judge=self.judge, sandbox=self._sandbox)

        return list(self._pool.map(one, zip(texts, items, strict=True)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._sandbox is not None:
            self._sandbox.close()


def grading_metrics(results: Sequence[GraderResult]) -> dict[str, float]:
    """Per-grader aggregates of one round of gradings (rft §3.5): ``reward_mean:<key>`` for each child of a multi
    grader (its ``sub_rewards``; a child that never ran counts 0), ``<error kind>_mean``/``_count`` for every error
    flag (share and number of gradings that raised it), ``grader_latency_mean`` (seconds per grading) and the model
    graders' token use (``grader_prompt_tokens_mean``/``_count``, ``grader_completion_tokens_mean``/``_count``)."""
    n = max(len(results), 1)
    out: dict[str, float] = {}
    keys = dict.fromkeys(key for r in results for key in r.sub_rewards)
    for key in keys:
        out[f"reward_mean:{key}"] = sum(r.sub_rewards.get(key, 0.0) for r in results) / n
    for kind in ERROR_KINDS:
        count = sum(bool(getattr(r.metadata.errors, kind)) for r in results)
        out[f"{kind}_mean"] = count / n
        out[f"{kind}_count"] = float(count)
    out["grader_latency_mean"] = sum(r.metadata.execution_time for r in results) / n
    usage = [u for r in results for u in r.model_grader_token_usage_per_model.values()]
    for part in ("prompt", "completion"):
        count = sum(getattr(u, f"{part}_tokens") for u in usage)
        out[f"grader_{part}_tokens_mean"] = count / n
        out[f"grader_{part}_tokens_count"] = float(count)
    return out


def _uses_python(raw: Any) -> bool:
    return "python" in json.dumps(raw)  # a python grader anywhere (also a multi's child)


@dataclass(slots=True)
class _ErrorWatch:
    """Counts failed gradings and decides when there are too many (``GraderFailure``)."""

    bad_steps: int = 0
    reasons: list[str] = field(default_factory=list)

    def check(self, results: Sequence[GraderResult], where: str, *, training: bool) -> float:
        # An answer that cannot be parsed (not JSON, or not matching response_format) scores 0: the policy's
        # fault, which the reward teaches away; only the grader's own failures count towards failing the job.
        failed = [r for r in results if r.metadata.errors.any() and not r.metadata.errors.sample_parse_error]
        for result in failed:
            reason = result.detail or result.metadata.errors.python_grader_runtime_error_details or "grading failed"
            if reason not in self.reasons and len(self.reasons) < MAX_REASONS:
                self.reasons.append(reason)
        share = len(failed) / max(len(results), 1)
        if results and len(failed) == len(results):
            raise GraderFailure(self._message(f"every grading of {where} failed"))
        if training:
            self.bad_steps = self.bad_steps + 1 if share > BAD_SHARE else 0
            if self.bad_steps >= MAX_BAD_STEPS:
                raise GraderFailure(
                    self._message(f"more than half the gradings failed in {MAX_BAD_STEPS} steps in a row")
                )
        return share

    def _message(self, what: str) -> str:
        shown = "; ".join(r.strip().splitlines()[-1] if r.strip() else r for r in self.reasons) or "no details"
        return f"The grader failed too often: {what}. Reasons (up to {MAX_REASONS}): {shown}"


# --------------------------------------------------------------------------------------------- objective
class GrpoObjective:
    """The ``Objective`` of a reinforcement run (see the module docstring)."""

    def __init__(
        self,
        settings: GrpoSettings,
        rewarder: Rewarder,
        tokenizer: ChatTokenizer,
        *,
        reference_adapter: bool,
        base_model_dir: Path | None = None,
        constraint: SchemaConstraint | None = None,
    ) -> None:
        self.settings = settings
        self.constraint = constraint  # response_format's schema: every answer is sampled inside it
        self.rewarder = rewarder
        self.tokenizer = tokenizer
        self.reference_adapter = reference_adapter
        self.base_model_dir = base_model_dir  # for the lean sampler's copy of the base model
        self._lean: LeanSampler | None = None
        self._lean_built = False
        self.errors = _ErrorWatch()
        self.graded: list[dict[str, Any]] = []  # the last evaluation's answers and grades (see ``evaluate``)
        self._last: tuple[Sequence[Prompt], int, list[str], list[Any], list[GraderResult]] | None = None

    # ------------------------------------------------------------------------------ sampling + grading
    def rollout(
        self, model: PeftModel, prompts: Sequence[Prompt], samples: int, setup: Setup, where: str, *, training: bool
    ) -> tuple[list[list[int]], torch.Tensor, dict[str, float]]:
        """Sample and grade ``samples`` answers per prompt. Returns (answers, ``(prompts, samples)`` rewards,
        metrics: reward_mean, reward_std, reasoning_tokens_mean/_count, grader_error_mean, parse_error_mean,
        ``grading_metrics``'s; sampling_s and grading_s, the seconds each took)."""
        s = self.settings
        rows = [p.input_ids for p in prompts for _ in range(samples)]
        started = time.perf_counter()
        sampler = self._sampler(setup)
        completions = None
        if sampler is not None:
            completions = sampler.sample(
                model, rows, max_new_tokens=s.max_new_tokens, stop_ids=s.stop_ids, temperature=s.temperature,
                constraint=self.constraint,
            )  # fmt: skip
        if completions is None:
            completions = sample_completions(
                model, rows, max_new_tokens=s.max_new_tokens, stop_ids=s.stop_ids, temperature=s.temperature,
                amp=setup.amp, constraint=self.constraint,
            )  # fmt: skip
        stops = set(s.stop_ids)
        texts = [self.tokenizer.decode([t for t in c.tokens if t not in stops]) for c in completions]
        items = [p.item for p in prompts for _ in range(samples)]
        sampled = time.perf_counter()
        results = self.rewarder.grade(texts, items)
        graded = time.perf_counter()
        self._last = (prompts, samples, texts, completions, results)
        error_share = self.errors.check(results, where, training=training)
        rewards = torch.tensor([r.reward for r in results], dtype=torch.float32).view(len(prompts), samples)
        parse_errors = sum(r.metadata.errors.sample_parse_error for r in results)
        reasoning = [len([t for t in c.tokens if t not in stops]) for c in completions]
        metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "reasoning_tokens_mean": sum(reasoning) / max(len(reasoning), 1),
            "reasoning_tokens_count": float(sum(reasoning)),
            "grader_error_mean": error_share,
            "parse_error_mean": parse_errors / max(len(results), 1),
            "sampling_s": sampled - started,
            "grading_s": graded - sampled,
            **grading_metrics(results),
        }
        return [c.tokens or [s.stop_ids[0]] for c in completions], rewards, metrics

    def _sampler(self, setup: Setup) -> LeanSampler | None:
        """The lean sampler, built at the first rollout (None: sample with the trainer's own model)."""
        if not self._lean_built:
            self._lean_built = True
            if self.settings.lean_sampling and self.base_model_dir is not None:
                self._lean = LeanSampler.build(self.base_model_dir, setup.amp or torch.float32, setup.device)
        return self._lean

    # ------------------------------------------------------------------------------------------- step
    def step(
        self,
        model: PeftModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        prompts: Sequence[Prompt],
        setup: Setup,
    ) -> tuple[dict[str, Any], int]:
        s = self.settings
        answers, rewards, metrics = self.rollout(model, prompts, s.group_size, setup, "a training step", training=True)
        advantages = group_advantages(rewards).view(-1).tolist()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total = len(answers)
        loss_sum = kl_sum = 0.0
        for index, batch in _micro_batches(prompts, answers, s.group_size, setup):
            with torch.no_grad(), self._reference(model):
                ref = _token_log_probs(model, batch, setup, s.temperature)
            logp = _token_log_probs(model, batch, setup, s.temperature)
            lengths = [len(answers[i]) for i in index]
            adv = torch.repeat_interleave(
                torch.tensor([advantages[i] for i in index], device=logp.device),
                torch.tensor(lengths, device=logp.device),
            )
            token_loss, kl = grpo_token_loss(logp, logp.detach(), ref, adv, s.clip_epsilon, s.kl_beta)
            per_answer = sequence_means(token_loss, lengths)
            (per_answer.sum() / total).backward()
            loss_sum += float(per_answer.detach().sum())
            kl_sum += float(sequence_means(kl.detach(), lengths).sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], s.max_grad_norm)
        optimizer.step()
        scheduler.step()
        metrics |= {"loss": loss_sum / total, "kl": kl_sum / total, "training_s": time.perf_counter() - started}
        pairs = zip(_repeat(prompts, s.group_size), answers, strict=True)
        return metrics, sum(len(p.input_ids) + len(a) for p, a in pairs)

    def evaluate(self, model: PeftModel, prompts: Sequence[Prompt], setup: Setup) -> dict[str, Any]:
        """The validation metrics; ``graded`` gets one record per answer: ``row`` (0-based index of the
        prompt), ``sample`` (0..eval_samples-1), ``item`` (the row), ``output_text``, ``reward``,
        ``sub_rewards``, ``error`` (why grading failed, or null), ``parse_error``, token counts, ``finished``."""
        self.graded = []
        _, _, metrics = self.rollout(
            model, prompts, self.settings.eval_samples, setup, "a validation run", training=False
        )
        assert self._last is not None
        shown, samples, texts, completions, results = self._last
        stops = set(self.settings.stop_ids)
        for index, (text, completion, result) in enumerate(zip(texts, completions, results, strict=True)):
            row, sample = divmod(index, samples)
            errors = result.metadata.errors
            failed = errors.any() and not errors.sample_parse_error
            self.graded.append({
                "row": row, "sample": sample, "line": shown[row].line, "item": shown[row].item,
                "output_text": text, "reward": float(result.reward), "sub_rewards": dict(result.sub_rewards),
                "error": (result.detail or errors.python_grader_runtime_error_details or "grading failed")
                if failed else None,
                "parse_error": bool(errors.sample_parse_error),
                "prompt_tokens": len(shown[row].input_ids),
                "completion_tokens": len([t for t in completion.tokens if t not in stops]),
                "finished": bool(completion.finished),
            })  # fmt: skip
        return metrics

    def close(self) -> None:
        """Stop the grader's threads and python sandbox (the loop calls it however the run ends)."""
        self.rewarder.close()

    @contextmanager
    def _reference(self, model: PeftModel) -> Iterator[None]:
        """The starting model: the parent adapter for continuous fine-tuning, else the adapter disabled."""
        if not self.reference_adapter:
            with model.disable_adapter():
                yield
            return
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter("default")  # peft marks the active adapter's weights trainable again


def load_reference_adapter(model: PeftModel, parent_dir: Path) -> None:
    """Load the parent adapter (continuous fine-tuning) beside the trained one, frozen: GRPO's KL reference."""
    model.load_adapter(str(parent_dir), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    model.set_adapter("default")


def _sequence(prompt: list[int], answer: list[int]) -> Example:
    return Example(input_ids=prompt + answer, labels=[IGNORE_INDEX] * len(prompt) + list(answer))


def _repeat(prompts: Sequence[Prompt], times: int) -> Iterator[Prompt]:
    return (p for p in prompts for _ in range(times))


def _micro_batches(
    prompts: Sequence[Prompt], answers: Sequence[list[int]], group_size: int, setup: Setup
) -> Iterator[tuple[list[int], PackedBatch]]:
    """(answer indices, batch) for the step's answers, at most ``micro_batch_tokens`` tokens a batch (at least one
    answer each).

    Flat layout: prompt trees (``packing.collate_trees``): a group's answers share one reading of their prompt,
    so a step computes ``prompt + Σ answers`` tokens per prompt instead of ``group × prompt + Σ answers``
    (a group too large for one batch is split, each part with its prompt). Mask layout: one row per answer.
    """
    budget = setup.micro_batch_tokens
    if setup.layout != "flat":
        sequences = [_sequence(p.input_ids, a) for p, a in zip(_repeat(prompts, group_size), answers, strict=True)]
        index: list[int] = []
        tokens = 0
        for i, sequence in enumerate(sequences):
            if index and tokens + len(sequence) > budget:
                yield index, collate_rows([[sequences[j]] for j in index])
                index, tokens = [], 0
            index.append(i)
            tokens += len(sequence)
        if index:
            yield index, collate_rows([[sequences[j]] for j in index])
        return
    pieces: list[tuple[list[int], list[int]]] = []  # (prompt ids, answer indices), each at most one batch
    for k, prompt in enumerate(prompts):
        piece: list[int] = []
        size = len(prompt) - 1
        for i in range(k * group_size, (k + 1) * group_size):
            if piece and size + len(answers[i]) > budget:
                pieces.append((prompt.input_ids, piece))
                piece, size = [], len(prompt) - 1
            piece.append(i)
            size += len(answers[i])
        pieces.append((prompt.input_ids, piece))
    batch: list[tuple[list[int], list[int]]] = []
    tokens = 0
    for ids, piece in pieces:
        size = len(ids) - 1 + sum(len(answers[i]) for i in piece)
        if batch and tokens + size > budget:
            yield _trees(batch, answers)
            batch, tokens = [], 0
        batch.append((ids, piece))
        tokens += size
    if batch:
        yield _trees(batch, answers)


def _trees(pieces: list[tuple[list[int], list[int]]], answers: Sequence[list[int]]) -> tuple[list[int], PackedBatch]:
    index = [i for _, piece in pieces for i in piece]
    return index, collate_trees([(ids, [answers[i] for i in piece]) for ids, piece in pieces])


def _token_log_probs(model: PeftModel, batch: PackedBatch, setup: Setup, temperature: float = 1.0) -> torch.Tensor:
    """The log-probability of every answer token of ``batch`` under the sampling distribution
    (``softmax(logits / temperature)``), in order (answer after answer)."""
    hidden, targets, _ = trained_hidden(model, batch.to(setup.device), setup.amp)
    if temperature > 0 and temperature != 1.0:
        hidden = hidden / temperature  # logits / T == head(hidden / T): the head is linear
    return head_log_probs(hidden, head_weight(model), targets, setup.amp)
