"""A reinforcement job's metrics as OpenAI shapes them: results.csv columns and metric events (rft §3.5, §3.6).

The trainer reports each step as flat numbers (``train_reward_mean``, ``valid_reward_mean:<child>``,
``train_sample_parse_error_count``, ``train_sampling_s`` ...; ``training.rft.grading_metrics``). Here they become:

* the results.csv row (``metric_columns``): the spec's recommended header, a ``train_reward_mean:<key>`` /
  ``valid_reward_mean:<key>`` pair per child of a multi grader (``<key>`` as the multi's ``graders`` names it,
  the same name the job's eval gives the child's testing criterion), then Tunery's own columns;
* the event's ``data``: the row's values flat (as OpenAI also writes ``train_mean_reward``,
  ``full_valid_mean_reward``, ``reasoning_tokens_mean`` flat), and the structured objects ``scores`` (overall and
  ``graders``: per child of a multi, or the one grader), ``usage.samples`` (reasoning tokens: mean per answer,
  count per step), ``usage.graders`` (model graders' token use), ``errors.graders`` (``train_``/``valid_`` +
  error kind + ``_mean``/``_count``), ``timing.step`` (``sampling`` = generation + grading of the step's
  samples, ``training``, ``eval`` = the whole validation file, ``full_iteration``) and ``timing.graders``.
  A step without validation leaves out every ``valid_*`` key and ``eval``.

Reasoning tokens: Tunery's open models do not reason apart from the answer, so a sample's reasoning tokens are the
tokens of its answer (stop token excluded), one meaning everywhere. Errors are counted for the job's grader as a
whole: a multi grader reports its children's error flags merged (``graders.run``), so they are not per child.
"""

from __future__ import annotations

from typing import Any

from tunery.domain.checkpoints import grader_reward_column, metric_columns
from tunery.domain.jobs import Job, Method
from tunery.graders import GraderMulti, parse_grader
from tunery.graders.result import ERROR_KINDS

MODEL_GRADERS = ("score_model", "label_model")
SPLITS = ("train", "valid")


def _grader(job: Job) -> Any:
    raw = job.extras.get("grader")
    if not isinstance(raw, dict):
        return None
    try:
        return parse_grader(raw, param="method.reinforcement.grader")
    except Exception:  # validated at create time; a view of metrics never fails a job
        return None


def grader_keys(job: Job) -> tuple[str, ...]:
    """The children of a reinforcement job's multi grader, by key (empty for any other grader or job)."""
    grader = _grader(job) if job.method is Method.REINFORCEMENT else None
    return tuple(grader.children()) if isinstance(grader, GraderMulti) else ()


def job_columns(job: Job) -> tuple[str, ...]:
    """``job``'s results.csv header."""
    return metric_columns(job.method.value, grader_keys(job))


def event_data(job: Job, metrics: dict[str, float], values: dict[str, float], step: int, total: int) -> dict[str, Any]:
    """A reinforcement step's metrics event ``data`` (see the module docstring): ``metrics`` is everything the
    trainer reported, ``values`` its results.csv row."""
    grader = _grader(job)
    name = grader.name if grader is not None else "grader"
    kind = grader.type if grader is not None else "unknown"
    validated = "valid_reward_mean" in metrics
    splits = SPLITS if validated else ("train",)

    def pick(prefix: str, keys: list[tuple[str, str]]) -> dict[str, float]:
        """``{out: metrics[f"{split}_{key}"]}`` for each ``(out suffix, key)`` and split that has a value."""
        picked: dict[str, float] = {}
        for split in splits:
            for suffix, key in keys:
                value = metrics.get(f"{split}_{key}")
                if value is not None:
                    picked[f"{split}_{prefix}{suffix}"] = value
        return picked

    data: dict[str, Any] = {**values, "step": step, "total_steps": total}
    if "train_reward_mean" in metrics:
        data["train_mean_reward"] = metrics["train_reward_mean"]
    if "train_reasoning_tokens_mean" in metrics:
        data["reasoning_tokens_mean"] = metrics["train_reasoning_tokens_mean"]
    if validated:
        data["full_valid_mean_reward"] = metrics["valid_reward_mean"]

    scores: dict[str, Any] = {k: metrics[k] for k in ("train_reward_mean", "valid_reward_mean") if k in metrics}
    if isinstance(grader, GraderMulti):
        scores["graders"] = [
            {"name": key, "type": child.type}
            | {col.split(":", 1)[0]: metrics[col] for split in splits
               if (col := grader_reward_column(split, key)) in metrics}
            for key, child in grader.children().items()
        ]  # fmt: skip
    else:
        scores["graders"] = [{"name": name, "type": kind} | pick("reward_mean", [("", "reward_mean")])]
    data["scores"] = scores

    usage: dict[str, Any] = {
        "samples": pick("reasoning_tokens", [("_mean", "reasoning_tokens_mean"), ("_count", "reasoning_tokens_count")])
    }
    if grader is not None and any(t in str(job.extras.get("grader")) for t in MODEL_GRADERS):
        entry: dict[str, Any] = {"name": name, "type": kind}
        entry |= pick("", [(f"{part}_tokens_{stat}", f"grader_{part}_tokens_{stat}")
                           for part in ("prompt", "completion") for stat in ("mean", "count")])  # fmt: skip
        usage["graders"] = [entry]
    data["usage"] = usage

    errors = pick("", [(f"{k}_{stat}", f"{k}_{stat}") for k in ERROR_KINDS for stat in ("mean", "count")])
    data["errors"] = {"graders": [{"name": name, "type": kind, **errors}]}

    timing: dict[str, float] = {}
    if (sampled := _sum(metrics, "train_sampling_s", "train_grading_s")) is not None:
        timing["sampling"] = sampled
    if (trained := metrics.get("train_training_s")) is not None:
        timing["training"] = trained
    if validated and (evaluated := _sum(metrics, "valid_sampling_s", "valid_grading_s")) is not None:
        timing["eval"] = evaluated
    if (whole := metrics.get("iteration_s")) is not None:
        timing["full_iteration"] = whole
    latency = pick("execution_latency", [("_mean", "grader_latency_mean")])
    data["timing"] = {"step": timing, "graders": [{"name": name, "type": kind, **latency}]}
    return data


def step_message(step: int, total: int, values: dict[str, float]) -> str:
    """``Step 10/20, train mean reward=0.42, full validation mean reward=0.68, full validation mean parse
    error=0.00`` (rft §3.5); the validation parts only on a step with validation."""
    message = f"Step {step}/{total}, train mean reward={values['train_reward_mean']:.2f}"
    if "valid_reward_mean" in values:
        message += ", " + validation_summary(values)
    return message


def validation_summary(values: dict[str, float]) -> str:
    """``full validation mean reward=0.68, full validation mean parse error=0.00``."""
    summary = f"full validation mean reward={values['valid_reward_mean']:.2f}"
    if (parse := values.get("full_valid_mean_parse_error")) is not None:
        summary += f", full validation mean parse error={parse:.2f}"
    return summary


def _sum(metrics: dict[str, float], *keys: str) -> float | None:
    values = [metrics[k] for k in keys if metrics.get(k) is not None]
    return sum(values) if values else None
