"""Grader definitions as pydantic models, named and shaped like OpenAI's OpenAPI ``Grader*`` schemas.

Parsing only: ``parse_grader`` turns a raw JSON object into a typed ``Grader`` (a discriminated union on
``type``) or raises ``InvalidGrader`` with the ``param`` path of the first problem. Deeper checks
(templates, formulas, python source) live in ``validate.py``. ``model_dump(mode="json",
exclude_unset=True)`` echoes a grader as it was received (``neq`` is stored and echoed as ``ne``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from tunery.graders.errors import InvalidGrader

TEXT_METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraderStringCheck(_Spec):
    """Compares ``input`` with ``reference``: 1 when the operation holds, else 0."""

    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]

    @field_validator("operation", mode="before")
    @classmethod
    def _neq_alias(cls, value: Any) -> Any:
        # The guides' prose says ``neq``; the schema's enum says ``ne`` (spec §1.3).
        return "ne" if value == "neq" else value


class GraderTextSimilarity(_Spec):
    """A similarity metric in [0, 1] between ``input`` and ``reference``."""

    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    evaluation_metric: Literal[
        "cosine",
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]
    pass_threshold: float | None = None


class GraderPython(_Spec):
    """``grade(sample, item) -> float`` defined in ``source``, run in the sandbox."""

    type: Literal["python"]
    name: str
    source: str
    image_tag: str | None = None
    pass_threshold: float | None = None


class InputText(_Spec):
    type: Literal["input_text", "output_text"]
    text: str


class InputImage(_Spec):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = None


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_audio"]


ContentPart = Annotated[InputText | InputImage | InputAudio, Field(discriminator="type")]


class EvalItem(_Spec):
    """One message of a model grader's prompt (``EvalItem``); ``content`` is a template."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[ContentPart]
    type: Literal["message"] | None = None


class GraderSamplingParams(BaseModel):
    """Sampling for a model grader; ``reasoning_effort`` is accepted and ignored (no reasoning models)."""

    model_config = ConfigDict(extra="ignore")
    seed: int | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_completions_tokens: int | None = Field(default=None, ge=1)
    reasoning_effort: str | None = None


class GraderScoreModel(_Spec):
    """A judge model scores the sample; its ``result`` is clipped to ``range`` (default [0, 1])."""

    type: Literal["score_model"]
    name: str
    model: str
    input: list[EvalItem] = Field(min_length=1)
    range: list[float] | None = None
    sampling_params: GraderSamplingParams | None = None
    pass_threshold: float | None = None

    @field_validator("range")
    @classmethod
    def _two_ordered_numbers(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError("range must hold two numbers [low, high] with low < high")
        return value

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.range[0], self.range[1]) if self.range else (0.0, 1.0)


class GraderLabelModel(_Spec):
    """A judge model picks one of ``labels``; 1 when it is one of ``passing_labels``, else 0."""

    type: Literal["label_model"]
    name: str
    model: str
    input: list[EvalItem] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)
    sampling_params: GraderSamplingParams | None = None

    @field_validator("passing_labels")
    @classmethod
    def _passing_subset(cls, value: list[str], info: ValidationInfo) -> list[str]:
        unknown = [label for label in value if label not in info.data.get("labels", [])]
        if unknown:
            raise ValueError(f"passing_labels must be a subset of labels; not in labels: {unknown}")
        return value


SubGrader = Annotated[
    GraderStringCheck | GraderTextSimilarity | GraderPython | GraderScoreModel | GraderLabelModel,
    Field(discriminator="type"),
]


class GraderMulti(_Spec):
    """Sub-graders combined by the ``calculate_output`` formula over their keys."""

    type: Literal["multi"]
    name: str
    graders: dict[str, SubGrader] | list[SubGrader] | SubGrader
    calculate_output: str
    invalid_grade: float | None = None

    def children(self) -> dict[str, SubGrader]:
        """Sub-graders by key: the dict's keys, else each child's ``name`` (spec §1.8)."""
        if isinstance(self.graders, dict):
            return dict(self.graders)
        if isinstance(self.graders, list):
            return {child.name: child for child in self.graders}
        return {self.graders.name: self.graders}


Grader = Annotated[
    GraderStringCheck | GraderTextSimilarity | GraderPython | GraderScoreModel | GraderLabelModel | GraderMulti,
    Field(discriminator="type"),
]
GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Grader)


def parse_grader(raw: Any, *, param: str = "grader", allowed: tuple[str, ...] = GRADER_TYPES) -> Grader:
    """A typed grader from a JSON object, or ``InvalidGrader`` naming the first bad field's path."""
    if not isinstance(raw, dict):
        raise InvalidGrader(f"'{param}' must be an object with a 'type'.", param=param)
    kind = raw.get("type")
    if kind not in allowed:
        shown = ", ".join(f"'{t}'" for t in allowed)
        raise InvalidGrader(
            f"Unknown grader type {kind!r} at '{param}.type'; expected one of {shown}.", param=f"{param}.type"
        )
    if kind == "multi":
        _reject_nested_multi(raw, param)
    try:
        grader: Grader = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise _as_invalid(exc, raw, param) from None
    return grader


def _reject_nested_multi(raw: dict[str, Any], param: str) -> None:
    children = raw.get("graders")
    items: list[tuple[str, Any]] = []
    if isinstance(children, dict) and "type" not in children:
        items = [(str(k), v) for k, v in children.items()]
    elif isinstance(children, list):
        items = [(str(i), v) for i, v in enumerate(children)]
    elif isinstance(children, dict):
        items = [("", children)]
    for key, child in items:
        if isinstance(child, dict) and child.get("type") == "multi":
            where = f"{param}.graders" + (f".{key}" if key else "")
            raise InvalidGrader("A multi grader cannot contain another multi grader.", param=f"{where}.type")


def _as_invalid(exc: ValidationError, raw: Any, param: str) -> InvalidGrader:
    # A union reports one error per member; the one reaching deepest into the data is the telling one.
    candidates = [(e, _data_path(raw, e["loc"], keep_last=e["type"] == "missing")) for e in exc.errors()]
    # On a tie, a wrong value (a bad enum, a missing field) tells more than a wrong type.
    error, parts = max(candidates, key=lambda c: (len(c[1]), not str(c[0]["type"]).endswith("_type")))
    kind = error["type"]
    path = ".".join([param, *parts])
    if kind == "missing":
        message = f"Missing required parameter: '{path}'."
    elif kind == "extra_forbidden":
        message = f"Unrecognized parameter: '{path}'."
    elif kind == "literal_error":
        message = f"Invalid value for '{path}': {error.get('input')!r}. {error['msg']}."
    else:
        message = f"Invalid value for '{path}': {error['msg']}."
    return InvalidGrader(message, param=path)


def _data_path(raw: Any, loc: tuple[int | str, ...], *, keep_last: bool) -> list[str]:
    """The parts of pydantic's error location that index into the data; the others are union-member
    tags pydantic adds (``'string_check'``, ``'dict[str,...]'``), which the caller never wrote."""
    node, parts = raw, []
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            parts.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            parts.append(f"[{part}]")
        elif keep_last and index == len(loc) - 1:
            parts.append(str(part))
    return [p for p in ".".join(parts).replace(".[", "[").split(".") if p]
