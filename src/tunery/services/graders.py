"""Grader endpoints' service: validate a grader or run it on one sample, judged by Tunery's own models.

Adapts the chat service to the graders' ``Judge`` protocol (``ChatJudge``): a model grader's ``model``
may name a base model, a fine-tuned model, a checkpoint or a deployment of the caller's project.
Checks that named judge models exist at validation time (unknown → 400 on ``grader.model``).
"""

from __future__ import annotations

from typing import Any

from tunery.domain.errors import InvalidRequest, NotFound
from tunery.graders import (
    RUN_GRADER_TYPES,
    ChatMessage,
    Grader,
    GraderLabelModel,
    GraderMulti,
    GraderResult,
    GraderScoreModel,
    InvalidGrader,
    JudgeReply,
    JudgeSampling,
    JudgeUsage,
    PythonSandbox,
    parse_grader,
    run_grader,
    sample_from_text,
    validate_grader,
)
from tunery.services.chat import ChatRequest, ChatService, Completion


class ChatJudge:
    """The ``Judge`` protocol over the chat service, for one project."""

    def __init__(self, chat: ChatService, project_id: str) -> None:
        self._chat = chat
        self._project_id = project_id

    def complete(self, model: str, messages: list[ChatMessage], sampling: JudgeSampling) -> JudgeReply:
        request = ChatRequest(
            model=model,
            messages=[{"role": m.role, "content": m.content} for m in messages],
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            max_tokens=sampling.max_tokens,
            n=1,
            stop=(),
            stream=False,
            include_usage=False,
        )
        completion = self._chat.create(self._project_id, request)
        assert isinstance(completion, Completion)  # not streamed
        usage = JudgeUsage(
            prompt_tokens=completion.usage.prompt_tokens, completion_tokens=completion.usage.completion_tokens
        )
        return JudgeReply(completion.texts[0], usage, completion.finish_reasons[0], model=model)


class GraderService:
    def __init__(self, chat: ChatService, sandbox: PythonSandbox) -> None:
        self._chat = chat
        self._sandbox = sandbox

    def judge(self, project_id: str) -> ChatJudge:
        return ChatJudge(self._chat, project_id)

    @property
    def sandbox(self) -> PythonSandbox:
        return self._sandbox

    def validate(
        self,
        project_id: str,
        raw: Any,
        *,
        param: str = "grader",
        allowed: tuple[str, ...] = RUN_GRADER_TYPES,
        item_fields: set[str] | None = None,
    ) -> Grader:
        """The parsed grader, or ``InvalidGrader`` (400) naming the bad ``param``; judge models must exist."""
        grader = parse_grader(raw, param=param, allowed=allowed)
        validate_grader(grader, item_fields=item_fields, param=param)
        self.check_models(project_id, grader, param)
        return grader

    def run(self, project_id: str, raw: Any, *, model_sample: Any, item: Any) -> GraderResult:
        """Grade ``model_sample`` (a string) for ``item`` (an object) with the grader ``raw``."""
        if not isinstance(model_sample, str):
            raise InvalidRequest("'model_sample' must be a string.", param="model_sample")
        if item is not None and not isinstance(item, dict):
            raise InvalidRequest("'item' must be an object.", param="item")
        grader = self.validate(project_id, raw)
        return run_grader(
            grader,
            sample=sample_from_text(model_sample),
            item=item or {},
            judge=self.judge(project_id),
            sandbox=self._sandbox,
        )

    def close(self) -> None:
        self._sandbox.close()

    def check_models(self, project_id: str, grader: Grader, param: str) -> None:
        """Raises InvalidGrader naming ``<param>.model``: a model grader's judge is no model this project can use."""
        if isinstance(grader, GraderMulti):
            for key, child in grader.children().items():
                self.check_models(project_id, child, f"{param}.graders.{key}")
        elif isinstance(grader, GraderScoreModel | GraderLabelModel):
            try:
                self._chat.resolve(project_id, model=grader.model, deployment=None)
            except NotFound:
                raise InvalidGrader(
                    f"The grader model '{grader.model}' is not a model or deployment this project can use.",
                    param=f"{param}.model",
                ) from None
