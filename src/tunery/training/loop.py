"""The LoRA training loop: ``run(spec, progress)`` turns a ``TrainingSpec`` into adapter checkpoints.

One plain loop (nanoGPT style): tokenize (``training.examples``, ``training.preferences`` for DPO, or
``training.rft.read_prompts`` for reinforcement fine-tuning), add the
adapter (``training.lora``), then for each optimizer step pack ``batch_size`` examples (``training.packing``),
run the micro-batches forward and backward, step AdamW on the LoRA parameters and report. What a step and an
evaluation compute is the method's ``Objective``: supervised (cross-entropy on assistant tokens, here), DPO
(``training.dpo``) or GRPO (``training.rft``); everything else (schedule, validation, checkpoints,
pause/resume/cancel) is shared.
Everything the worker needs goes through ``progress.jsonl`` records and files in the run folder (see ``run``);
the worker asks for pause/cancel with ``control.json``. It does not read the database, talk HTTP or copy
adapters to the blob store (the worker does).

Decisions worth knowing:

* The loss is summed over trainable tokens of the whole step and divided by their count (each micro-batch
  backpropagates ``its sum / step count``), so micro-batching never changes the gradient.
* Micro-batches are flat by default: the examples back to back in one unpadded row, attended example by
  example (``packing.varlen_attention``); ``layout="mask"`` uses padded rows with a 4D block mask instead
  (same numbers, more work).
* The LM head runs only at trainable positions, in chunks (``training.head``): the vocabulary-sized logits
  never exist for the whole batch, nor stay for backward.
* With a validation file, the whole of it is evaluated once before the first step (``initial_validation`` in
  the STARTED record): the curve's step 0.
* Precision: fp32 weights; bf16 autocast where bf16 matmuls are fast (CUDA with bf16; on a CPU where
  ``hardware.precision`` measured them clearly faster than fp32), fp32 elsewhere; never fp16. On CPUs without
  native bf16 it is ~100x slower.
* ``trained_tokens`` counts real (non-padding) tokens fed to the model, prompt and completion alike, once per
  epoch: what the user is billed for, and what ``tokens_per_s`` measures.
* Resuming restores adapter, optimizer, scheduler, RNG states and the epoch's data order, so a paused and
  resumed run produces the same losses as one that never stopped.
* Data parallel (``ranks``, see ``training.distributed``): every rank holds the whole model and takes its
  shard of each step's examples; token counts and LoRA gradients are summed across ranks, so the step is the
  single-process step. Rank 0 alone evaluates, writes records, checkpoints and state, and reads pause/cancel
  requests, which it broadcasts so every rank stops after the same step. Supervised only for now.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.domain.checkpoints import GRADER_REWARD_SEPARATOR, metric_columns
from tunery.hardware.precision import fastest_format
from tunery.training import progress as control
from tunery.training.constrained import SchemaConstraint
from tunery.training.distributed import SINGLE, Ranks
from tunery.training.dpo import (
    REFERENCE_FILE,
    dpo_evaluate,
    dpo_train_step,
    load_reference,
    save_reference,
    with_reference,
)
from tunery.training.examples import IGNORE_INDEX, Example, read_examples
from tunery.training.head import batch_loss, head_weight, prepare_fused
from tunery.training.lora import ADAPTER_FILES, add_adapter, replace_dir, save_adapter
from tunery.training.packing import (
    Layout,
    epoch_order,
    micro_batches,
    step_examples,
    steps_per_epoch,
    use_varlen_attention,
)
from tunery.training.preferences import PreferencePair, read_pairs
from tunery.training.progress import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    STATE_DIR,
    STATE_FILE,
    ProgressKind,
    ProgressWriter,
    RunFolder,
    write_graded,
)
from tunery.training.remote_judge import RemoteJudge
from tunery.training.rft import (
    GrpoObjective,
    GrpoSettings,
    Prompt,
    Rewarder,
    load_reference_adapter,
    read_prompts,
)
from tunery.training.segment_attention import allow_compiled, decide, is_allowed
from tunery.training.spec import TrainingSpec

COMPILED_ATTENTION_MIN_TOKENS = 50_000  # trained tokens from which short segments may use compiled attention
DEFAULT_MICRO_BATCH_TOKENS = 4096  # padded tokens per forward/backward pass: bounds activation memory
LOGIT_CHUNK_ELEMENTS = 1 << 24  # positions × vocabulary per LM-head chunk (64 MiB of fp32 logits)
MAX_GRAD_NORM = 1.0
VALID_CHUNK_EXAMPLES = 64  # examples packed at a time when evaluating the whole validation set

METRICS_FILE = "metrics.json"
TRAINER_FILE = "trainer.pt"


class UnsupportedMethod(ValueError):
    """The spec asks for a training method this trainer does not implement (shown to the user)."""


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite (shown to the user, with advice)."""


@dataclass(slots=True)
class RunState:
    """Where a run stands; saved in ``state/state.json`` so a resumed run continues exactly here."""

    epoch: int = 0  # 0-based epoch in progress (== n_epochs once training is done)
    step_in_epoch: int = 0  # optimizer steps already taken in this epoch
    step: int = 0  # optimizer steps taken in the whole run (the 1-based number of the last one)
    order: list[int] | None = None  # this epoch's example order
    trained_tokens: int = 0
    valid_cursor: int = 0  # where the next validation batch starts
    train_examples: int = 0  # a guard: the state belongs to this data
    best_valid_loss: float | None = None  # early stopping: the best full validation loss at an epoch end
    best_step: int = 0  # ... and the step (checkpoint) it was measured at (RFT: the best valid_reward_mean's)
    epochs_without_improvement: int = 0
    best_valid_reward: float | None = None  # RFT: the best valid_reward_mean so far (its checkpoint is best_step)

    def note_valid_reward(self, reward: float | None) -> None:
        """RFT: a checkpoint is saved at every evaluation; the best reward's is the model (the later on a tie)."""
        if reward is not None and (self.best_valid_reward is None or reward >= self.best_valid_reward):
            self.best_valid_reward, self.best_step = reward, self.step

    def note_full_validation(self, loss: float | None, min_delta: float) -> None:
        """Early stopping's bookkeeping at an epoch end: a new best, or one more epoch without one."""
        if loss is None:
            return
        if self.best_valid_loss is None or loss < self.best_valid_loss - min_delta:
            self.best_valid_loss, self.best_step, self.epochs_without_improvement = loss, self.step, 0
        else:
            self.epochs_without_improvement += 1


class Timings:
    """Seconds each phase of the trainer's start took, from the process's own start (imports included)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"process_start": round(_seconds_since_process_start(), 3)}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def _seconds_since_process_start() -> float:
    """Wall seconds since this process was created (``/proc/self/stat``), i.e. interpreter start and imports."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass(frozen=True, slots=True)
class Setup:
    """What every step needs besides the weights: device, precision, packing sizes and layout."""

    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for plain fp32
    max_seq_len: int
    micro_batch_tokens: int
    layout: Layout = "flat"  # "flat" needs the model switched to packing.varlen_attention


def run(
    spec: TrainingSpec,
    progress: ProgressWriter,
    *,
    micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS,
    layout: Layout = "flat",
    ranks: Ranks = SINGLE,
) -> None:
    """Train one LoRA adapter as ``spec`` says, reporting through ``progress`` and files under ``spec.run_dir``.

    Records (``ProgressKind``): STARTED once; STEP after every optimizer step; CHECKPOINT at each epoch end;
    then exactly one of COMPLETED, PAUSED or CANCELLED (``__main__`` adds FAILED for exceptions).
    Files: ``checkpoints/step-<N>/`` (adapter + ``metrics.json``) at each epoch end and at a pause (RFT: also
    at each evaluation), the newest ``keep_checkpoints`` kept (RFT: the best by ``valid_reward_mean``);
    ``graded/step-<N>.jsonl`` (RFT) the graded validation answers of each evaluation; ``state/`` (resumable)
    at each epoch end and at a pause;
    ``adapter/`` (the final adapter) at the end.

    Raises:
        UnsupportedMethod: ``spec.method`` is not ``"supervised"``.
        InvalidTrainingData: a training or validation line cannot be tokenized.
        TrainingDiverged: the loss became NaN or infinite.
    """
    with ExitStack() as cleanup:  # closed however the run ends (completed, paused, cancelled, raised)
        _run(spec, progress, micro_batch_tokens, layout, ranks, cleanup)


def _run(
    spec: TrainingSpec,
    progress: ProgressWriter,
    micro_batch_tokens: int,
    layout: Layout,
    ranks: Ranks,
    cleanup: ExitStack,
) -> None:
    if spec.method not in ("supervised", "dpo", "reinforcement"):
        raise UnsupportedMethod(f"Training method '{spec.method}' is not supported by this trainer.")
    if spec.method in ("dpo", "reinforcement") and ranks.world > 1:
        raise UnsupportedMethod(
            f"{spec.method} runs in one training process; set distributed processes to 1 for these jobs."
        )
    if not ranks.main:
        progress = _SILENT  # rank 0 alone reports
    run_dir = spec.run_path
    timings = Timings()
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    device = pick_device(spec.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    amp = pick_amp_dtype(spec.dtype, device, Path(spec.precision_cache) if spec.precision_cache else None)
    setup = Setup(device, amp, spec.max_seq_len, micro_batch_tokens, layout)
    seed_everything(spec.seed)

    timings.lap("precision")
    tokenizer = ChatTokenizer.from_dir(Path(spec.base_model_dir))
    rft = spec.method == "reinforcement"
    read: Callable[[Path, ChatTokenizer, int], Sequence[Any]] = read_pairs if spec.method == "dpo" else read_examples
    if rft:
        read = lambda path, tok, length: read_prompts(path, tok, length, spec.rft_max_new_tokens)  # noqa: E731
    train: list[Any] = list(read(Path(spec.train_file), tokenizer, spec.max_seq_len))
    valid: list[Any] = (
        list(read(Path(spec.validation_file), tokenizer, spec.max_seq_len)) if spec.validation_file else []
    )

    timings.lap("data")
    allow_compiled(  # compiling takes seconds: only where the run is long enough to win them back
        device.type == "cpu"
        and amp is torch.bfloat16
        and sum(len(e) for e in train) * spec.n_epochs >= COMPILED_ATTENTION_MIN_TOKENS
    )
    resume = Path(spec.resume_from) if spec.resume_from else None
    base = load_base_model(Path(spec.base_model_dir), device)
    if layout == "flat":
        use_varlen_attention(base)
    init_adapter = resume / ADAPTER_DIR if resume else (Path(spec.init_adapter_dir) if spec.init_adapter_dir else None)
    model = add_adapter(base, spec.lora, init_adapter)
    if rft and spec.init_adapter_dir:  # continuous fine-tuning: the parent adapter is GRPO's reference
        load_reference_adapter(model, Path(spec.init_adapter_dir))
    model.train()
    timings.lap("model_load")
    if layout == "flat" and decide_attention_kernel(base.config):
        if amp is torch.bfloat16:
            prepare_fused(head_weight(model))
        timings.lap("attention_kernel")
    if spec.method == "dpo":
        train, valid = dpo_reference(model, train, valid, setup, run_dir, resuming=resume is not None)
        timings.lap("dpo_reference")
    objective = Objective.for_spec(spec, tokenizer)
    cleanup.callback(objective.close)  # RFT: the grader's threads and python sandbox
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    per_epoch = steps_per_epoch(len(train), spec.batch_size)
    total_steps = per_epoch * spec.n_epochs
    scheduler = linear_schedule(optimizer, total_steps, spec.warmup_ratio)

    state = RunState(order=epoch_order(len(train), spec.seed, 0), train_examples=len(train))
    if resume is not None:
        state = load_state(resume, optimizer, scheduler, len(train))
    initial: dict[str, Any] = {}
    # RFT evaluates the whole validation file every rft_eval_interval steps, at epoch ends and at the last step,
    # as valid_* (the spec's valid_reward_mean); the other methods evaluate a batch as valid_* and the whole file
    # as full_valid_*.
    whole = "valid_" if rft else "full_valid_"
    if valid and state.step == 0 and ranks.main:  # where validation starts: the curve's step 0
        initial = {f"{whole}{k}": v for k, v in objective.evaluate(model, valid, setup).items()}
        if rft:
            initial = rft_validation_names(initial)
        if objective.graded is not None:
            write_graded(RunFolder(run_dir).graded(0), objective.graded())
        timings.lap("initial_validation")
    progress.emit(
        ProgressKind.STARTED,
        total_steps=total_steps,
        n_epochs=spec.n_epochs,
        steps_per_epoch=per_epoch,
        examples=len(train),
        validation_examples=len(valid),
        tokens_per_epoch=sum(len(e) for e in train),
        trainable_tokens_per_epoch=sum(target_count(e) for e in train),
        resumed_from_step=state.step,
        trainable_params=sum(p.numel() for p in params),
        device=device.type,
        dtype="bf16" if setup.amp is torch.bfloat16 else "fp32",
        method=spec.method,
        initial_validation=initial,
        timings=timings.seconds,
    )
    if _request(run_dir, ranks) == "cancel":
        progress.emit(ProgressKind.CANCELLED, step=state.step)
        return

    started = time.perf_counter()
    steps_this_run = 0
    while state.epoch < spec.n_epochs:
        assert state.order is not None
        batch = [train[i] for i in step_examples(state.order, state.step_in_epoch, spec.batch_size)]
        step_start = time.perf_counter()
        trained, real_tokens = objective.step(model, optimizer, scheduler, batch, setup, ranks)
        step_seconds = time.perf_counter() - step_start
        state.step += 1
        state.step_in_epoch += 1
        state.trained_tokens += real_tokens
        steps_this_run += 1
        metrics: dict[str, Any] = {"step": state.step, **{f"train_{k}": v for k, v in trained.items()}}
        epoch_done = state.step_in_epoch == per_epoch
        evaluated = False  # RFT: the whole validation file was evaluated (and a checkpoint follows)
        if rft:
            due = state.step % spec.rft_eval_interval == 0 or state.step == total_steps or epoch_done
            if valid and ranks.main and due:
                metrics |= rft_validation_names(
                    {f"valid_{k}": v for k, v in objective.evaluate(model, valid, setup).items()}
                )
                if objective.graded is not None:  # before the STEP record: the worker reads it then
                    write_graded(RunFolder(run_dir).graded(state.step), objective.graded())
                state.note_valid_reward(metrics.get("valid_reward_mean"))
                evaluated = True
        elif valid and ranks.main and (state.step % spec.metrics_every == 0 or state.step == total_steps):
            picked = [valid[(state.valid_cursor + i) % len(valid)] for i in range(min(spec.batch_size, len(valid)))]
            state.valid_cursor = (state.valid_cursor + len(picked)) % len(valid)
            metrics |= {f"valid_{k}": v for k, v in objective.evaluate(model, picked, setup).items()}
        if epoch_done and valid and not rft and ranks.main:
            metrics |= {f"full_valid_{k}": v for k, v in objective.evaluate(model, valid, setup).items()}
        if rft:
            metrics["iteration_s"] = time.perf_counter() - step_start  # sampling, grading, training, evaluation
        for name, value in metrics.items():
            if value is not None and not math.isfinite(value):
                raise TrainingDiverged(
                    f"The {name.replace('_', ' ')} became {value} at step {state.step}; "
                    "try a smaller learning_rate_multiplier."
                )
        progress.emit(
            ProgressKind.STEP,
            **metrics,
            epoch=state.epoch + 1,
            total_steps=total_steps,
            trained_tokens=state.trained_tokens,
            tokens_per_s=real_tokens / step_seconds,
            seconds_per_step=(time.perf_counter() - started) / steps_this_run,
            learning_rate=scheduler.get_last_lr()[0],
        )

        checkpoint: Path | None = None
        stop_early = False
        finished_epoch = state.epoch + 1  # the epoch this step belongs to
        if epoch_done:
            if spec.early_stopping_patience:
                state.note_full_validation(metrics.get("full_valid_loss"), spec.early_stopping_min_delta)
                stop_early = (
                    state.epochs_without_improvement >= spec.early_stopping_patience and finished_epoch < spec.n_epochs
                )
            state.epoch += 1
            state.step_in_epoch = 0
            state.order = epoch_order(len(train), spec.seed, state.epoch) if state.epoch < spec.n_epochs else None
        if epoch_done or evaluated:  # RFT: a checkpoint at every evaluation, as OpenAI's RFT does
            saving = time.perf_counter()
            if ranks.main:
                checkpoint = save_checkpoint(
                    model,
                    run_dir,
                    state.step,
                    checkpoint_metrics(metrics, spec.method),
                    spec.keep_checkpoints,
                    protect=state.best_step,
                    by_reward=rft,
                )
                save_state(run_dir / STATE_DIR, model, optimizer, scheduler, state)
            if epoch_done:
                stop_early = bool(ranks.broadcast(stop_early))  # full validation ran on rank 0 only
            progress.emit(
                ProgressKind.CHECKPOINT,
                step=state.step,
                epoch=finished_epoch,
                path=str(checkpoint),
                metrics=checkpoint_metrics(metrics, spec.method),
                save_s=round(time.perf_counter() - saving, 3),
            )
            if stop_early:
                break

        request = _request(run_dir, ranks)
        if request == "cancel":
            progress.emit(ProgressKind.CANCELLED, step=state.step)
            return
        if request == "pause" and state.epoch < spec.n_epochs:
            if checkpoint is None and ranks.main:  # not already saved at this step's epoch end
                checkpoint = save_checkpoint(
                    model, run_dir, state.step, checkpoint_metrics(metrics, spec.method), spec.keep_checkpoints,
                    protect=state.best_step, by_reward=rft,
                )  # fmt: skip
                save_state(run_dir / STATE_DIR, model, optimizer, scheduler, state)
            progress.emit(
                ProgressKind.PAUSED,
                step=state.step,
                state_path=str(run_dir / STATE_DIR),
                checkpoint=str(checkpoint),
                metrics=checkpoint_metrics(metrics, spec.method),
            )
            return

    if not ranks.main:
        return
    if rft and state.best_step and state.best_step != state.step:  # the best validation reward's checkpoint
        use_checkpoint(run_dir, state.best_step)
        progress.emit(
            ProgressKind.COMPLETED,
            step=state.step,
            trained_tokens=state.trained_tokens,
            adapter_path=str(run_dir / ADAPTER_DIR),
            best_step=state.best_step,
        )
        return
    if state.epoch < spec.n_epochs:  # stopped early: the model is the best checkpoint, not the last step
        use_checkpoint(run_dir, state.best_step)
        progress.emit(
            ProgressKind.COMPLETED,
            step=state.step,
            trained_tokens=state.trained_tokens,
            adapter_path=str(run_dir / ADAPTER_DIR),
            best_step=state.best_step,
            stopped_early={
                "epoch": state.epoch,
                "n_epochs": spec.n_epochs,
                "best_step": state.best_step,
                "best_full_valid_loss": state.best_valid_loss,
                "patience": spec.early_stopping_patience,
                "min_delta": spec.early_stopping_min_delta,
            },
        )
        return
    adapter = save_adapter(model, run_dir / ADAPTER_DIR)
    progress.emit(
        ProgressKind.COMPLETED, step=state.step, trained_tokens=state.trained_tokens, adapter_path=str(adapter)
    )


class _Silent(ProgressWriter):
    """The progress writer of ranks other than 0: they report nothing."""

    def __init__(self) -> None:
        pass

    def emit(self, kind: ProgressKind, **data: Any) -> None:
        pass


_SILENT = _Silent()


def _request(run_dir: Path, ranks: Ranks) -> str | None:
    """The pause/cancel request rank 0 reads, on every rank, so all ranks stop after the same step."""
    return ranks.broadcast(control.requested(run_dir) if ranks.main else None)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------- setup
def pick_device(requested: str) -> torch.device:
    """``auto`` is CUDA when there is a GPU, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_amp_dtype(requested: str, device: torch.device, cache_file: Path | None = None) -> torch.dtype | None:
    """The autocast dtype: bf16 where it is measured faster (``auto``, see ``hardware.precision``) or asked
    for (``bf16``); None means fp32."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if fastest_format("autocast", cache_file=cache_file) == "bf16" else None


def decide_attention_kernel(config: Any) -> bool:
    """Measure (and so compile) the segment attention kernel now, if compiling is allowed for this run; returns
    whether it was measured. Llama-like configs only (heads, KV heads, head size)."""
    if not is_allowed():
        return False
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    decide(heads, kv_heads, head_dim)
    return True


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def load_base_model(folder: Path, device: torch.device) -> PreTrainedModel:
    """The base model in fp32 with SDPA attention and no KV cache, on ``device``."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model.to(device)
    return model


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero at ``total_steps``."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------- compute
def target_count(item: Example | PreferencePair) -> int:
    """Positions of ``item`` that have a target (the first token is never predicted); both sides of a pair."""
    if isinstance(item, PreferencePair):
        return target_count(item.chosen) + target_count(item.rejected)
    if isinstance(item, Prompt):
        return 0  # nothing to imitate: the answers are sampled
    return sum(label != IGNORE_INDEX for label in item.labels[1:])


@dataclass(frozen=True, slots=True)
class Objective:
    """What a training method does in a step and in an evaluation; metric names come without their prefix
    (``loss`` → ``train_loss``, ``valid_loss``, ``full_valid_loss``)."""

    step: Callable[[PeftModel, torch.optim.Optimizer, Any, Sequence[Any], Setup, Ranks], tuple[dict[str, Any], int]]
    evaluate: Callable[[PeftModel, Sequence[Any], Setup], dict[str, Any]]
    graded: Callable[[], list[dict[str, Any]]] | None = None  # RFT: the last evaluation's graded answers
    close: Callable[[], None] = lambda: None  # what the run holds beyond the model (RFT: the rewarder)

    @staticmethod
    def for_spec(spec: TrainingSpec, tokenizer: ChatTokenizer | None = None) -> Objective:
        if spec.method == "reinforcement":
            if tokenizer is None or spec.grader is None:
                raise ValueError("A reinforcement objective needs the tokenizer and the grader.")
            grpo = rft_objective(spec, tokenizer)
            return Objective(  # one process only (see run): the ranks are not passed on
                step=lambda model, opt, sched, prompts, setup, _ranks: grpo.step(model, opt, sched, prompts, setup),
                evaluate=grpo.evaluate,
                graded=lambda: grpo.graded,
                close=grpo.close,
            )
        if spec.method == "dpo":
            beta = spec.dpo_beta
            return Objective(
                step=lambda model, opt, sched, pairs, setup, _ranks: dpo_train_step(
                    model, opt, sched, pairs, setup, beta, MAX_GRAD_NORM
                ),
                evaluate=lambda model, pairs, setup: dpo_evaluate(model, pairs, setup, beta),
            )
        return Objective(step=_supervised_step, evaluate=_supervised_evaluate)


def rft_objective(spec: TrainingSpec, tokenizer: ChatTokenizer) -> GrpoObjective:
    """GRPO with the spec's grader, group size, sampling budget and loss settings."""
    assert spec.grader is not None
    settings = GrpoSettings(
        group_size=spec.rft_group_size,
        eval_samples=spec.rft_eval_samples,
        max_new_tokens=spec.rft_max_new_tokens,
        stop_ids=tuple(tokenizer.stop_token_ids) or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id else (0,)),
        temperature=spec.rft_temperature,
        kl_beta=spec.rft_kl_beta,
        clip_epsilon=spec.rft_clip_epsilon,
        max_grad_norm=MAX_GRAD_NORM,
        parse_json=spec.rft_parse_json,
        lean_sampling=spec.rft_lean_sampling,
    )
    rewarder = Rewarder(
        spec.grader,
        concurrency=spec.grader_concurrency,
        parse_json=spec.rft_parse_json,
        response_schema=spec.rft_response_schema,
        judge=RemoteJudge(spec.judge_url, spec.judge_token or "") if spec.judge_url else None,
    )
    constraint = None
    if spec.rft_response_schema is not None:  # sampling constrained to response_format (training.constrained)
        constraint = SchemaConstraint.compile(spec.rft_response_schema, tokenizer, settings.stop_ids)
    return GrpoObjective(
        settings, rewarder, tokenizer, reference_adapter=bool(spec.init_adapter_dir),
        base_model_dir=Path(spec.base_model_dir), constraint=constraint,
    )  # fmt: skip


def _supervised_step(
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    examples: Sequence[Example],
    setup: Setup,
    ranks: Ranks,
) -> tuple[dict[str, Any], int]:
    loss, accuracy, real_tokens = train_step(model, optimizer, scheduler, examples, setup, ranks)
    return {"loss": loss, "mean_token_accuracy": accuracy}, real_tokens


def _supervised_evaluate(model: PeftModel, examples: Sequence[Example], setup: Setup) -> dict[str, Any]:
    loss, accuracy = evaluate(model, examples, setup)
    return {"loss": loss, "mean_token_accuracy": accuracy}


def dpo_reference(
    model: PeftModel,
    train: list[PreferencePair],
    valid: list[PreferencePair],
    setup: Setup,
    run_dir: Path,
    *,
    resuming: bool,
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The pairs with their reference log-probabilities: computed from the model as it starts (and saved), or,
    when the run already computed them (a resume, a restart), read back so every step compares to the same model.

    Raises:
        ValueError: a resumed run whose reference values are missing or are for other data.
    """
    path = run_dir / REFERENCE_FILE
    if path.is_file():
        return load_reference(path, train, valid)
    if resuming:
        raise ValueError(f"The resumed DPO run has lost its reference log-probabilities ({path.name}).")
    train, valid = with_reference(model, train, setup), with_reference(model, valid, setup)
    save_reference(path, train, valid)
    return train, valid


def train_step(
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    examples: Sequence[Example],
    setup: Setup,
    ranks: Ranks = SINGLE,
) -> tuple[float | None, float | None, int]:
    """One optimizer step on ``examples``. Returns (mean loss, token accuracy, real tokens); None without targets.

    With several ranks, this rank trains on its shard of ``examples``; counts, loss sums and gradients are
    summed across ranks, so every rank returns (and steps with) what one process would on all of them.
    """
    mine = ranks.shard(examples)
    global_targets, global_real = ranks.sum([sum(target_count(e) for e in mine), sum(len(e) for e in mine)])
    targets, real_tokens = int(global_targets), int(global_real)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    correct = 0
    if targets:
        for batch in micro_batches(mine, setup.max_seq_len, setup.micro_batch_tokens, layout=setup.layout):
            loss, right = batch_loss(model, batch.to(setup.device), setup.amp)
            (loss / targets).backward()
            loss_sum += loss.item()
            correct += right
        params = [p for p in model.parameters() if p.requires_grad]
        ranks.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        loss_sum, correct_sum = ranks.sum([loss_sum, correct])
        correct = int(correct_sum)
    optimizer.step()
    scheduler.step()
    if not targets:
        return None, None, real_tokens
    return loss_sum / targets, correct / targets, real_tokens


@torch.no_grad()
def evaluate(model: PeftModel, examples: Sequence[Example], setup: Setup) -> tuple[float | None, float | None]:
    """Mean loss and token accuracy over all trainable tokens of ``examples`` (dropout off)."""
    model.eval()
    loss_sum = 0.0
    correct = 0
    targets = 0
    for start in range(0, len(examples), VALID_CHUNK_EXAMPLES):
        chunk = examples[start : start + VALID_CHUNK_EXAMPLES]
        for batch in micro_batches(chunk, setup.max_seq_len, setup.micro_batch_tokens, layout=setup.layout):
            loss, right = batch_loss(model, batch.to(setup.device), setup.amp)
            loss_sum += loss.item()
            correct += right
            targets += batch.trainable_tokens
    model.train()
    if not targets:
        return None, None
    return loss_sum / targets, correct / targets


# --------------------------------------------------------------------------------------------- files
def checkpoint_metrics(metrics: dict[str, Any], method: str) -> dict[str, float]:
    """The results.csv columns of a step record that have a value (spec §7.3 checkpoint metrics; RFT: with a
    multi grader's per-child rewards)."""
    graders = tuple(
        dict.fromkeys(k.split(GRADER_REWARD_SEPARATOR, 1)[1] for k in metrics if GRADER_REWARD_SEPARATOR in k)
    )
    columns = metric_columns(method, graders)
    return {key: float(metrics[key]) for key in columns if metrics.get(key) is not None}


def rft_validation_names(values: dict[str, Any]) -> dict[str, Any]:
    """An RFT evaluation's ``valid_*`` metrics plus the spec's ``full_valid_mean_parse_error`` (rft §3.6): the
    share of validation answers that did not parse."""
    return {**values, "full_valid_mean_parse_error": values.get("valid_parse_error_mean")}


def save_checkpoint(
    model: PeftModel,
    run_dir: Path,
    step: int,
    metrics: dict[str, float],
    keep: int,
    protect: int = 0,
    *,
    by_reward: bool = False,
) -> Path:
    """Write ``checkpoints/step-<step>/`` (adapter + ``metrics.json``), then delete all but the newest ``keep``
    and the ``protect`` step's (early stopping's best so far, which may become the model). ``by_reward``
    (RFT): keep the ``keep`` with the highest ``valid_reward_mean`` instead, and the newest."""
    extra = {METRICS_FILE: json.dumps(metrics, indent=2)}
    folder = save_adapter(model, run_dir / CHECKPOINTS_DIR / f"step-{step}", extra_files=extra)
    existing = sorted(
        (p for p in (run_dir / CHECKPOINTS_DIR).glob("step-*") if p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    if by_reward:
        ranked = sorted(existing, key=lambda p: (_valid_reward(p), int(p.name[5:])), reverse=True)
        dropped = [p for p in ranked[max(keep, 1) :] if p.name != f"step-{step}"]  # the newest stays for the worker
    else:
        dropped = existing[: max(0, len(existing) - max(keep, 1))]
    for old in dropped:
        if int(old.name[5:]) != protect:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _valid_reward(folder: Path) -> float:
    try:
        value = json.loads((folder / METRICS_FILE).read_text()).get("valid_reward_mean")
    except (OSError, ValueError):
        return -math.inf
    return float(value) if isinstance(value, (int, float)) else -math.inf


def use_checkpoint(run_dir: Path, step: int) -> None:
    """Make the checkpoint of ``step`` the final adapter (``adapter/``), atomically."""
    best = run_dir / CHECKPOINTS_DIR / f"step-{step}"
    staging = Path(tempfile.mkdtemp(prefix=f".{ADAPTER_DIR}~", dir=run_dir))
    for name in ADAPTER_FILES:
        shutil.copy2(best / name, staging / name)
    replace_dir(staging, run_dir / ADAPTER_DIR)


def save_state(
    folder: Path, model: PeftModel, optimizer: torch.optim.Optimizer, scheduler: Any, state: RunState
) -> None:
    """Write everything a resumed run needs into ``folder``, atomically (a temporary folder, then a rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}~", dir=folder.parent))
    try:
        save_adapter(model, staging / ADAPTER_DIR)
        numpy_state = np.random.get_state()
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python_rng": random.getstate(),
                "numpy_rng": {
                    "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                    "pos": int(numpy_state[2]),
                    "has_gauss": int(numpy_state[3]),
                    "cached_gaussian": float(numpy_state[4]),
                },
            },
            staging / TRAINER_FILE,
        )
        (staging / STATE_FILE).write_text(json.dumps(asdict(state)))
        replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, train_examples: int) -> RunState:
    """Restore optimizer, scheduler and RNG states from ``folder``; the adapter was loaded with the model.

    Raises:
        ValueError: the state was saved for a different training file.
    """
    state = RunState(**json.loads((folder / STATE_FILE).read_text()))
    if state.train_examples != train_examples:
        raise ValueError(
            f"The saved state is for {state.train_examples} training examples, but the file has {train_examples}."
        )
    saved = torch.load(folder / TRAINER_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    numpy_rng = saved["numpy_rng"]
    np.random.set_state(
        (
            "MT19937",
            numpy_rng["keys"].numpy().astype(np.uint32),
            numpy_rng["pos"],
            numpy_rng["has_gauss"],
            numpy_rng["cached_gaussian"],
        )
    )
    return state
