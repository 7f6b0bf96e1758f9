"""``python -m tunery.training [--processes N] <run_dir>/spec.json``: the training subprocess the worker starts.

With ``--processes N`` (N > 1) this process becomes torchrun's agent and starts N ranks of
``python -m tunery.training spec.json`` on this machine (``training.distributed``); each rank ties itself to
the agent as the agent is tied to the worker, so killing the agent (or the worker) ends every rank, and a
rank that dies makes torchrun stop the others and exit non-zero: the worker's usual crash path.

Runs ``training.loop.run`` and turns any exception into one FAILED progress record (a stable ``code`` and a
message a user can act on) and exit code 1; exit code 0 otherwise (completed, paused or cancelled: the
progress records say which). Logs go to stderr, which the worker sends to ``trainer.log``.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from tunery.training.lifeline import PARENT_ENV, die_with_parent
from tunery.training.progress import ProgressKind, ProgressWriter
from tunery.training.spec import TrainingSpec

log = logging.getLogger("tunery.training")


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    processes = 1
    if len(args) == 3 and args[0] == "--processes" and args[1].isdigit():
        processes, args = int(args[1]), args[2:]
    if len(args) != 1:
        sys.stderr.write("usage: python -m tunery.training [--processes N] <run_dir>/spec.json\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if processes == 0:  # one per GPU
        import torch

        processes = torch.cuda.device_count() if torch.cuda.is_available() else 1
    if processes > 1:
        return launch_ranks(processes, args[0])
    spec = TrainingSpec.read(Path(args[0]))
    progress = ProgressWriter(spec.run_path)
    ranks = None
    try:
        from tunery.training.distributed import join, leave
        from tunery.training.loop import run  # torch is imported here, after the lifeline is in place

        ranks = join(spec.device)
        run(spec, progress, ranks=ranks)
        leave(ranks)
    except Exception as exc:  # the process edge: every failure becomes a FAILED record
        code, message = describe_failure(exc)
        log.error("Training failed (%s): %s\n%s", code, message, traceback.format_exc())
        if ranks is None or ranks.main:
            progress.emit(ProgressKind.FAILED, code=code, message=message)
        return 1
    return 0


def launch_ranks(processes: int, spec_path: str) -> int:
    """Be torchrun's agent for ``processes`` ranks on this machine; the ranks die with this process."""
    os.environ[PARENT_ENV] = str(os.getpid())
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; the spec's num_threads overrides it
    from tunery.training.distributed import torchrun

    return torchrun(processes, spec_path)


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """A stable error code and a user-facing message for an exception that ended training."""
    import torch

    from tunery.training.examples import InvalidTrainingData
    from tunery.training.loop import TrainingDiverged, UnsupportedMethod
    from tunery.training.lora import InvalidLoraSettings
    from tunery.training.rft import GraderFailure

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or _is_cpu_oom(exc):
        return (
            "out_of_memory",
            "Training ran out of memory. Try a smaller batch_size, shorter examples, or a machine with more memory.",
        )
    if isinstance(exc, InvalidTrainingData):
        return "invalid_training_file", str(exc)
    if isinstance(exc, InvalidLoraSettings):
        return "invalid_lora_settings", str(exc)
    if isinstance(exc, GraderFailure):
        return "grader_error", str(exc)
    if isinstance(exc, TrainingDiverged):
        return "training_diverged", str(exc)
    if isinstance(exc, UnsupportedMethod):
        return "unsupported_method", str(exc)
    return "internal_error", f"Training failed: {type(exc).__name__}: {exc}"


def _is_cpu_oom(exc: BaseException) -> bool:
    # torch's CPU allocator raises a plain RuntimeError; its message is the only way to recognise it.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


if __name__ == "__main__":
    sys.exit(main())
