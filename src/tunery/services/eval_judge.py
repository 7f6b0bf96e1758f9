"""The graders' ``Judge`` for eval runs: a model grader's question answered by the chat service.

The judge model is named like any model in Tunery (a base model, a fine-tune, a checkpoint or a deployment
of the run's project) and runs on the same engine, batched with everything else in flight.
"""

from __future__ import annotations

from tunery.graders import ChatMessage, JudgeReply, JudgeSampling, JudgeUsage
from tunery.services.chat import ChatService, Completion


class ChatJudge:
    def __init__(self, chat: ChatService, project_id: str) -> None:
        self._chat = chat
        self._project_id = project_id

    def complete(self, model: str, messages: list[ChatMessage], sampling: JudgeSampling) -> JudgeReply:
        body = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "max_tokens": sampling.max_tokens,
        }
        answer = self._chat.create(self._project_id, body)
        assert isinstance(answer, Completion)
        usage = JudgeUsage(prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens)
        return JudgeReply(text=answer.texts[0], usage=usage, finish_reason=answer.finish_reasons[0], model=model)
