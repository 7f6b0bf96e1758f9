"""Checks a fine-tuning job request and turns it into plain values, naming the ``param`` of every problem.

Covers the shapes clients really send (spec §3.2.1, §6.1, §12): ``method`` with nested hyperparameters, the
legacy top-level ``hyperparameters``, DPO's ``beta`` directly under ``method.dpo``, Azure's ``-1`` for auto,
``trainingType`` spelled any way the docs spell it, suffix/seed/metadata/integrations limits, and reinforcement
fine-tuning's ``method.reinforcement`` (grader, RFT hyperparameters, ``response_format``; evals-graders-rft.md §3.2).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from tunery.domain.errors import InvalidRequest
from tunery.domain.jobs import REASONING_EFFORTS, Hyperparameters, Method
from tunery.graders import (
    RUN_GRADER_TYPES,
    Grader,
    GraderLabelModel,
    GraderMulti,
    GraderScoreModel,
    parse_grader,
    schema_error,
)
from tunery.graders import validate_grader as check_grader

MAX_SEED = 2_147_483_647
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_INTEGRATIONS = 5
TRACKERS = ("wandb", "mlflow")  # mlflow: a Tunery extension in wandb's shape
TRAINING_TYPES = {
    "standard": "Standard",
    "globalstandard": "GlobalStandard",
    "developer": "Developer",
    "developertier": "Developer",
    "1": "Standard",
    "2": "GlobalStandard",
    "3": "Developer",
}
# Fields some clients send that Tunery accepts, stores and echoes without acting on them.
TOLERATED_DPO_FIELDS = ("l2_multiplier",)
TOLERATED_TOP_LEVEL = ("prompt_loss_weight",)
EARLY_STOPPING_DEFAULTS: dict[str, float] = {"patience": 1, "min_delta": 0.001}
RANGES: dict[str, tuple[float, float, bool]] = {
    # name: (min, max, integer?)
    "n_epochs": (1, 50, True),
    "batch_size": (1, 256, True),
    "learning_rate_multiplier": (0, 10, False),
    "beta": (0, 2, False),
    "eval_interval": (1, 10_000, True),
    "eval_samples": (1, 32, True),
    "compute_multiplier": (0.00001, 10, False),
}
# Tunery's training extensions (``lora``, ``max_seq_len``, ``warmup_ratio``): name: (min, max, integer?), both
# ends inclusive. Absent: the worker's settings (``TUNERY_WORKER__LORA_R`` …), published with these ranges.
ADVANCED_RANGES: dict[str, tuple[float, float, bool]] = {
    "lora.rank": (1, 256, True),
    "lora.alpha": (1, 1024, True),
    "max_seq_len": (64, 8192, True),
    "warmup_ratio": (0, 0.5, False),
}
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_TARGET_MODULES = 32
RFT_HYPERPARAMETERS = {"eval_interval", "eval_samples", "compute_multiplier", "reasoning_effort"}
GRADER_PARAM = "method.reinforcement.grader"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A checked create request; file ids and model names are resolved by the job service."""

    model: str
    training_file: str
    validation_file: str | None
    method: Method
    hyperparameters: Hyperparameters
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    training_type: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def parse_job_request(body: dict[str, Any]) -> JobRequest:
    """Raises:
    InvalidRequest: naming the offending field in ``param``.
    """
    model = _required_string(body, "model")
    training_file = _required_string(body, "training_file")
    validation_file = body.get("validation_file")
    if validation_file is not None and (not isinstance(validation_file, str) or not validation_file):
        raise InvalidRequest("validation_file must be a file id or null.", param="validation_file")
    if validation_file == training_file:
        raise InvalidRequest(
            "validation_file must differ from training_file: the same data should not be in both.",
            param="validation_file",
        )
    method, hyperparameters, method_extras = _parse_method(body.get("method"), body.get("hyperparameters"))
    extras = dict(method_extras)
    for name in TOLERATED_TOP_LEVEL:
        if body.get(name) is not None:
            extras[name] = _number(body[name], name)
    if method is Method.REINFORCEMENT:
        if not validation_file:
            raise InvalidRequest(
                "Reinforcement fine-tuning needs a validation_file: the job measures its reward on it "
                "(valid_reward_mean).",
                param="validation_file",
            )
        if body.get("early_stopping") not in (None, False):
            raise InvalidRequest(
                "early_stopping watches the validation loss, which reinforcement fine-tuning has none of; "
                "leave it out.",
                param="early_stopping",
            )
        early_stopping = None
    else:
        early_stopping = parse_early_stopping(
            body.get("early_stopping"),
            auto_epochs=hyperparameters.n_epochs is None,
            has_validation=bool(validation_file),
        )
    if early_stopping is not None:
        extras["early_stopping"] = early_stopping
    if body.get("evals") is not None:  # Tunery extension: evals to run on every checkpoint (checked by the caller)
        evals = body["evals"]
        if not isinstance(evals, list) or not all(isinstance(e, dict) and isinstance(e.get("eval_id"), str)
                                                  for e in evals):  # fmt: skip
            raise InvalidRequest("evals must be a list of objects with an 'eval_id'.", param="evals")
        extras["evals"] = evals
    distributed = parse_distributed(body.get("distributed"), method)
    if distributed is not None:
        extras["distributed"] = distributed
    extras |= parse_hub_output(body)
    extras |= parse_training_extensions(body)
    return JobRequest(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        method=method,
        hyperparameters=hyperparameters,
        seed=_parse_seed(body.get("seed")),
        suffix=_parse_suffix(body.get("suffix")),
        metadata=_parse_metadata(body.get("metadata")),
        integrations=_parse_integrations(body.get("integrations")),
        training_type=_parse_training_type(body.get("trainingType", body.get("training_type"))),
        extras=extras,
    )


MAX_PROCESSES = 64
HUB_FORMATS = ("peft", "merged", "gguf")
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def parse_hub_output(body: dict[str, Any]) -> dict[str, Any]:
    """Together's ``hf_output_repo_name`` / ``hf_api_token``: when the job succeeds its model is pushed to that
    Hugging Face Hub repository (as ``POST /models/{model}/push`` does). Tunery extensions:
    ``hf_output_format`` (peft, merged or gguf; default peft) and ``hf_output_private`` (default true).
    The token is kept with the job until the push and never echoed; without one the server's token is used.
    """
    repo = body.get("hf_output_repo_name")
    others = [name for name in ("hf_api_token", "hf_output_format", "hf_output_private") if body.get(name) is not None]
    if repo is None:
        if others:
            raise InvalidRequest(f"{others[0]} is only used with hf_output_repo_name.", param=others[0])
        return {}
    if not isinstance(repo, str) or not HUB_REPO_RE.match(repo):
        raise InvalidRequest(
            f"hf_output_repo_name must be a Hugging Face repository 'owner/name' (got {repo!r}).",
            param="hf_output_repo_name",
        )
    fmt = body.get("hf_output_format") or "peft"
    if fmt not in HUB_FORMATS:
        raise InvalidRequest(
            f"hf_output_format must be one of {', '.join(HUB_FORMATS)} (got {fmt!r}).", param="hf_output_format"
        )
    private = body.get("hf_output_private", True)
    if not isinstance(private, bool):
        raise InvalidRequest("hf_output_private must be true or false.", param="hf_output_private")
    token = body.get("hf_api_token")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise InvalidRequest("hf_api_token must be a non-empty string.", param="hf_api_token")
    extras: dict[str, Any] = {"hf_output": {"repo_id": repo, "format": fmt, "private": private}}
    if token is not None:
        extras["hf_api_token"] = token.strip()
    return extras


def parse_training_extensions(body: dict[str, Any]) -> dict[str, Any]:
    """Tunery's training extensions, each optional (absent: the worker's setting), checked against
    ``ADVANCED_RANGES`` and echoed on the job as given:

    * ``lora``: ``{"rank": 1-256, "alpha": 1-1024, "target_modules": ["q_proj", ...]}`` — the adapter's size,
      its scale (the update is multiplied by alpha/rank) and which layers it adapts (names of the base
      model's linear layers; the trainer refuses a name the model lacks). A continued fine-tune keeps its
      parent adapter's shape: ``lora`` is refused there (``JobService.create``).
    * ``max_seq_len``: 64-8192 tokens in a packed training row; longer examples are cut to it.
    * ``warmup_ratio``: 0-0.5, the share of steps over which the learning rate climbs to its peak.
    """
    extras: dict[str, Any] = {}
    lora = body.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            raise InvalidRequest('lora must be an object such as {"rank": 8, "alpha": 16}.', param="lora")
        unknown = sorted(set(lora) - {"rank", "alpha", "target_modules"})
        if unknown:
            raise InvalidRequest(
                f"lora has no field '{unknown[0]}'; use rank, alpha and target_modules.", param=f"lora.{unknown[0]}"
            )
        checked: dict[str, Any] = {
            name: _advanced(lora[name], f"lora.{name}") for name in ("rank", "alpha") if lora.get(name) is not None
        }
        if lora.get("target_modules") is not None:
            checked["target_modules"] = _target_modules(lora["target_modules"])
        if checked:
            extras["lora"] = checked
    for name in ("max_seq_len", "warmup_ratio"):
        if body.get(name) is not None:
            extras[name] = _advanced(body[name], name)
    return extras


def _advanced(value: Any, param: str) -> int | float:
    low, high, integer = ADVANCED_RANGES[param]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{param} must be a number (got {value!r}).", param=param)
    if integer and not float(value).is_integer():
        raise InvalidRequest(f"{param} must be a whole number (got {value!r}).", param=param)
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low:g} and {high:g} (got {value:g}).", param=param)
    return int(value) if integer else float(value)


def _target_modules(value: Any) -> list[str]:
    param = "lora.target_modules"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TARGET_MODULES:
        raise InvalidRequest(
            f'{param} must be a list of 1 to {MAX_TARGET_MODULES} layer names such as ["q_proj", "v_proj"].',
            param=param,
        )
    for name in value:
        if not isinstance(name, str) or not MODULE_NAME_RE.match(name):
            raise InvalidRequest(
                f"{param}: {name!r} is not a layer name (letters, digits and '_', such as q_proj).", param=param
            )
    return list(dict.fromkeys(value))


def parse_distributed(value: Any, method: Method) -> dict[str, int] | None:
    """Tunery's ``distributed`` extension: ``{"processes": N}`` trains the job data-parallel on N processes
    (torchrun; one per GPU on CUDA), overriding the worker's ``processes`` setting. Absent or null: the setting.
    DPO and reinforcement jobs train in one process.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest('distributed must be an object such as {"processes": 2}.', param="distributed")
    unknown = sorted(set(value) - {"processes"})
    if unknown:
        raise InvalidRequest(
            f"distributed has no field '{unknown[0]}'; use processes.", param=f"distributed.{unknown[0]}"
        )
    processes = value.get("processes")
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= MAX_PROCESSES:
        raise InvalidRequest(
            f"distributed.processes must be a whole number from 1 to {MAX_PROCESSES} (got {processes!r}).",
            param="distributed.processes",
        )
    if processes > 1 and method in (Method.DPO, Method.REINFORCEMENT):
        raise InvalidRequest(
            f"{method.value} jobs train in one process: leave distributed out.", param="distributed.processes"
        )
    return {"processes": processes}


def parse_early_stopping(value: Any, *, auto_epochs: bool, has_validation: bool) -> dict[str, float] | None:
    """Tunery's ``early_stopping`` extension: stop once the full validation loss (measured at each epoch end)
    has not improved by more than ``min_delta`` for ``patience`` epochs; the best checkpoint is the model.

    Absent or null: on (patience 1, min_delta 0.001) when ``n_epochs`` is auto and there is a validation file,
    off otherwise — an explicit ``n_epochs`` runs them all unless this field asks. ``false``: off. ``true`` or
    ``{"patience": 1-2, "min_delta": >= 0}``: on (needs a validation file). Patience stays within the three
    checkpoints a job keeps, so the best one is always there to become the model.
    """
    if value is False or (value is None and not (auto_epochs and has_validation)):
        return None
    rules = dict(EARLY_STOPPING_DEFAULTS)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(rules))
        if unknown:
            raise InvalidRequest(
                f"early_stopping has no field '{unknown[0]}'; use patience and min_delta.",
                param=f"early_stopping.{unknown[0]}",
            )
        if "patience" in value:
            patience = value["patience"]
            if isinstance(patience, bool) or not isinstance(patience, int) or not 1 <= patience <= 2:
                message = f"early_stopping.patience must be 1 or 2 epochs (got {patience!r})."
                raise InvalidRequest(message, param="early_stopping.patience")
            rules["patience"] = patience
        if "min_delta" in value:
            rules["min_delta"] = _number(value["min_delta"], "early_stopping.min_delta")
            if not 0 <= rules["min_delta"] <= 10:
                message = "early_stopping.min_delta must be between 0 and 10."
                raise InvalidRequest(message, param="early_stopping.min_delta")
    elif value not in (None, True):
        raise InvalidRequest(
            "early_stopping must be true, false or an object {patience, min_delta}.", param="early_stopping"
        )
    if not has_validation:
        raise InvalidRequest(
            "early_stopping watches the validation loss: give a validation_file, or leave early_stopping out.",
            param="early_stopping",
        )
    return rules


def _required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string.", param=name)
    return value.strip()


def _parse_method(method: Any, legacy: Any) -> tuple[Method, Hyperparameters, dict[str, Any]]:
    if method is None:
        return Method.SUPERVISED, _parse_hyperparameters(legacy, "hyperparameters", Method.SUPERVISED), {}
    if not isinstance(method, dict):
        raise InvalidRequest("method must be an object such as {'type': 'supervised'}.", param="method")
    kind = method.get("type")
    try:
        parsed = Method(kind if isinstance(kind, str) else "")
    except ValueError:
        raise InvalidRequest(
            f"method.type must be 'supervised', 'dpo' or 'reinforcement' (got {kind!r}).", param="method.type"
        ) from None
    section = method.get(parsed.value) or {}
    if not isinstance(section, dict):
        raise InvalidRequest(f"method.{parsed.value} must be an object.", param=f"method.{parsed.value}")
    nested = section.get("hyperparameters")
    extras: dict[str, Any] = {}
    if parsed is Method.DPO:
        # The Azure DPO how-to puts beta (and l2_multiplier) directly under method.dpo: accept both places.
        loose = {k: section[k] for k in ("beta",) if k in section}
        if loose:
            nested = {**loose, **(nested or {})}
        for name in TOLERATED_DPO_FIELDS:
            if section.get(name) is not None:
                extras[name] = _number(section[name], f"method.dpo.{name}")
    if parsed is Method.REINFORCEMENT:
        extras |= parse_reinforcement(section)
    if nested is not None and legacy is not None:
        raise InvalidRequest(
            "Give hyperparameters either in method or in the deprecated top-level 'hyperparameters', not both.",
            param="hyperparameters",
        )
    where = f"method.{parsed.value}.hyperparameters" if nested is not None else "hyperparameters"
    return parsed, _parse_hyperparameters(nested if nested is not None else legacy, where, parsed), extras


def _parse_hyperparameters(raw: Any, where: str, method: Method) -> Hyperparameters:
    if raw is None:
        return Hyperparameters()
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be an object.", param=where)
    allowed = {"n_epochs", "batch_size", "learning_rate_multiplier"} | ({"beta"} if method is Method.DPO else set())
    if method is Method.REINFORCEMENT:
        allowed |= RFT_HYPERPARAMETERS
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidRequest(
            f"Unknown hyperparameter {unknown[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}.",
            param=f"{where}.{unknown[0]}",
        )
    values = {
        name: _hyperparameter(raw.get(name), name, f"{where}.{name}") for name in allowed if name != "reasoning_effort"
    }
    if "reasoning_effort" in allowed:
        values["reasoning_effort"] = _reasoning_effort(raw.get("reasoning_effort"), f"{where}.reasoning_effort")
    return Hyperparameters(**values)


def _reasoning_effort(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if value not in REASONING_EFFORTS:
        raise InvalidRequest(f"{param} must be one of {', '.join(REASONING_EFFORTS)} (got {value!r}).", param=param)
    return str(value)


def parse_reinforcement(section: dict[str, Any]) -> dict[str, Any]:
    """``method.reinforcement``'s grader and ``response_format``, checked, as job extras (echoed as received).

    The grader must parse and pass ``graders.validate_grader`` (item fields are checked against the training
    file by the job service; model graders' judge models by it too). ``response_format`` is
    ``{"type": "json_schema", "json_schema": {name, schema, strict}}`` or Azure's flat ``{"type":
    "json_schema", name, schema, strict}`` (or ``{"type": "text"}``).
    """
    if section.get("grader") is None:
        raise InvalidRequest(
            "method.reinforcement.grader is required: the grader scores the model's answers.", param=GRADER_PARAM
        )
    raw = section["grader"]
    grader = parse_grader(raw, param=GRADER_PARAM, allowed=RUN_GRADER_TYPES)
    check_grader(grader, param=GRADER_PARAM)
    extras: dict[str, Any] = {"grader": raw}
    if section.get("response_format") is not None:
        response_format_schema(section["response_format"])  # raises when malformed
        extras["response_format"] = section["response_format"]
    return extras


def has_model_grader(raw: dict[str, Any]) -> bool:
    """Whether a (valid) grader is, or combines, a ``score_model`` / ``label_model``: it needs a judge."""

    def found(grader: Grader) -> bool:
        if isinstance(grader, GraderScoreModel | GraderLabelModel):
            return True
        return isinstance(grader, GraderMulti) and any(found(child) for child in grader.children().values())

    return found(parse_grader(raw, param=GRADER_PARAM))


def response_format_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema of an RFT ``response_format`` (either documented shape); None for ``{"type": "text"}``.

    Raises:
        InvalidRequest: naming ``method.reinforcement.response_format``.
    """
    param = "method.reinforcement.response_format"
    if not isinstance(value, dict) or value.get("type") not in ("json_schema", "text"):
        raise InvalidRequest(
            f"{param} must be {{'type': 'json_schema', 'json_schema': {{'name', 'schema', 'strict'}}}}.", param=param
        )
    if value["type"] == "text":
        return None
    nested = value.get("json_schema")
    holder: dict[str, Any] = nested if isinstance(nested, dict) else value
    where = f"{param}.json_schema.schema" if isinstance(nested, dict) else f"{param}.schema"
    schema = holder.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param} needs a 'schema' object (a JSON schema).", param=where)
    problem = schema_error(schema)
    if problem is not None:
        raise InvalidRequest(f"{where} is not a valid JSON schema: {problem}", param=where)
    return schema


def _hyperparameter(value: Any, name: str, param: str) -> Any:
    """``None``/``"auto"``/``-1`` (Azure) mean auto; anything else must be in range."""
    if value is None or value == "auto" or (value == -1 and not isinstance(value, bool)):
        return None
    low, high, integer = RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{param} must be 'auto' or a number (got {value!r}).", param=param)
    if integer and (not isinstance(value, int) and not float(value).is_integer()):
        raise InvalidRequest(f"{param} must be a whole number (got {value!r}).", param=param)
    if integer and not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high} (got {value}).", param=param)
    if not integer and not low < value <= high:
        raise InvalidRequest(f"{param} must be greater than {low} and at most {high} (got {value}).", param=param)
    return int(value) if integer else float(value)


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{param} must be a number (got {value!r}).", param=param)
    return float(value)


def _parse_seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(MAX_SEED + 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InvalidRequest(f"seed must be an integer between 0 and {MAX_SEED} (got {value!r}).", param="seed")
    return value


def _parse_suffix(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SUFFIX_RE.match(value):
        raise InvalidRequest(
            f"suffix must be 1 to 40 characters of letters, digits, '-' and '_' (got {value!r}).", param="suffix"
        )
    return value


def _parse_metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be an object of string keys and values.", param="metadata")
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"metadata may have at most {MAX_METADATA_PAIRS} pairs.", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > MAX_METADATA_KEY or len(item) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"metadata[{key!r}]: keys are at most {MAX_METADATA_KEY} characters and values strings of at most "
                f"{MAX_METADATA_VALUE}.",
                param=f"metadata.{key}",
            )
    return dict(value)


def _parse_integrations(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_INTEGRATIONS:
        raise InvalidRequest(f"integrations must be a list of at most {MAX_INTEGRATIONS} items.", param="integrations")
    for index, item in enumerate(value):
        kind = item.get("type") if isinstance(item, dict) else None
        options = item.get(kind) if isinstance(item, dict) and isinstance(kind, str) else None
        if kind not in TRACKERS or not isinstance(options, dict):
            raise InvalidRequest(
                "each integration must be {'type': 'wandb', 'wandb': {'project': ...}} "
                "(or 'mlflow' in the same shape).",
                param=f"integrations[{index}]",
            )
        if not isinstance(options.get("project"), str) or not options["project"]:
            raise InvalidRequest(f"{kind}.project is required.", param=f"integrations[{index}].{kind}.project")
        tags = options.get("tags")
        if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
            raise InvalidRequest(f"{kind}.tags must be a list of strings.", param=f"integrations[{index}].{kind}.tags")
    return value


def _parse_training_type(value: Any) -> str | None:
    if value is None:
        return None
    key = str(value).strip().lower().replace("_", "").replace(" ", "")
    if isinstance(value, bool) or key not in TRAINING_TYPES:
        raise InvalidRequest(
            f"trainingType must be Standard, GlobalStandard or Developer (got {value!r}).", param="trainingType"
        )
    return TRAINING_TYPES[key]


def request_rules() -> dict[str, Any]:
    """The limits ``parse_job_request`` enforces, as plain data, so a form can check values as they are typed
    from the very rules the API applies (``GET /fine_tuning/rules``). Numbers: ``min`` is exclusive unless
    ``integer`` (``_hyperparameter``); ``"auto"`` (or Azure's ``-1``) is always accepted."""
    hyperparameters = {
        name: {"min": low, "max": high, "integer": integer, "min_exclusive": not integer}
        for name, (low, high, integer) in RANGES.items()
    }
    advanced: dict[str, dict[str, Any]] = {
        name.replace(".", "_"): {"min": low, "max": high, "integer": integer, "min_exclusive": False}
        for name, (low, high, integer) in ADVANCED_RANGES.items()
    }
    advanced["lora_target_modules"] = {"pattern": MODULE_NAME_RE.pattern, "max_items": MAX_TARGET_MODULES}
    return {
        "hyperparameters": hyperparameters,
        "advanced": advanced,
        "seed": {"min": 0, "max": MAX_SEED, "integer": True, "min_exclusive": False},
        "suffix": {
            "pattern": SUFFIX_RE.pattern,
            "max_length": 40,
            "description": "1 to 40 characters of letters, digits, '-' and '_'",
        },
    }
