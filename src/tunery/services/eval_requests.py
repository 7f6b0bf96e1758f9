"""Typed requests of the Evals API (OpenAI's ``CreateEvalRequest``, ``CreateEvalRunRequest``, ...).

The API edge parses bodies into these models (an invalid body is a 400 naming the parameter path); the
evals service takes them. Graders inside ``testing_criteria`` stay raw here: the graders module parses them
(``parse_grader``), so each grader's errors name their own path. Unknown keys are kept (``extra="allow"``)
where OpenAI's schema allows more than Tunery reads, and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

MetadataField = Annotated[dict[str, str] | None, Field(default=None, max_length=16)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class CustomDataSourceConfig(_Model):
    type: Literal["custom"]
    item_schema: dict[str, Any]
    include_sample_schema: bool = False


class CreateEvalRequest(_Model):
    name: str | None = None
    metadata: MetadataField
    data_source_config: CustomDataSourceConfig
    testing_criteria: list[dict[str, Any]] = Field(min_length=1)


class UpdateEvalRequest(_Model):
    name: str | None = None
    metadata: MetadataField


class JsonlRow(_Model):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(_Model):
    type: Literal["file_content"]
    content: list[JsonlRow]


class FileIdSource(_Model):
    type: Literal["file_id"]
    id: str


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class TemplateMessages(_Model):
    type: Literal["template"]
    template: list[dict[str, Any]] = Field(min_length=1)


class ItemReferenceMessages(_Model):
    type: Literal["item_reference"]
    item_reference: str


InputMessages = Annotated[TemplateMessages | ItemReferenceMessages, Field(discriminator="type")]


class RunSamplingParams(_Model):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    # The schema says max_completion_tokens; OpenAI's and Azure's examples say max_completions_tokens.
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        validation_alias=AliasChoices("max_completion_tokens", "max_completions_tokens", "max_tokens"),
    )


class JsonlDataSource(_Model):
    type: Literal["jsonl"]
    source: Source


class CompletionsDataSource(_Model):
    type: Literal["completions"]
    source: Source
    model: str = Field(min_length=1)
    input_messages: InputMessages | None = None
    sampling_params: RunSamplingParams | None = None


DataSource = Annotated[JsonlDataSource | CompletionsDataSource, Field(discriminator="type")]


class CreateEvalRunRequest(_Model):
    name: str | None = None
    metadata: MetadataField
    data_source: DataSource


class CheckpointEval(_Model):
    """One entry of a fine-tuning job's ``evals`` (Tunery extension): run this eval on every checkpoint and
    on the base model, with this completions data source (its ``model`` is set per checkpoint)."""

    eval_id: str
    data_source: dict[str, Any]
