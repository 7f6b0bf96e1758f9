"""``python -m tunery.training <run_dir>/spec.json``: the training subprocess the worker starts.

Runs ``training.loop.run`` and turns any exception into one FAILED progress record (a stable ``code`` and a
message a user can act on) and exit code 1; exit code 0 otherwise (completed, paused or cancelled: the
progress records say which). Logs go to stderr, which the worker sends to ``trainer.log``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from tunery.training.lifeline import die_with_parent
from tunery.training.progress import ProgressKind, ProgressWriter
from tunery.training.spec import TrainingSpec

log = logging.getLogger("tunery.training")


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tunery.training <run_dir>/spec.json\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = TrainingSpec.read(Path(args[0]))
    progress = ProgressWriter(spec.run_path)
    try:
        from tunery.training.loop import run  # torch is imported here, after the lifeline is in place

        run(spec, progress)
    except Exception as exc:  # the process edge: every failure becomes a FAILED record
        code, message = describe_failure(exc)
        log.error("Training failed (%s): %s\n%s", code, message, traceback.format_exc())
        progress.emit(ProgressKind.FAILED, code=code, message=message)
        return 1
    return 0


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """A stable error code and a user-facing message for an exception that ended training."""
    import torch

    from tunery.training.examples import InvalidTrainingData
    from tunery.training.loop import TrainingDiverged, UnsupportedMethod
    from tunery.training.rft import GraderFailure

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or _is_cpu_oom(exc):
        return (
            "out_of_memory",
            "Training ran out of memory. Try a smaller batch_size, shorter examples, or a machine with more memory.",
        )
    if isinstance(exc, InvalidTrainingData):
        return "invalid_training_file", str(exc)
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
