"""The trainer's ``Judge``: model graders ask the worker's ``JudgeRelay`` (``services.judge_relay``) over loopback.

Reinforcement fine-tuning grades in the trainer process, which has no chat engine; the relay answers with the
same judge evals use. Any failure (the relay gone, the judge model unknown, a timeout) raises, which the
grader reports as ``model_grader_server_error`` with the reason.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict

from tunery.graders import ChatMessage, JudgeReply, JudgeSampling, JudgeUsage

TIMEOUT_S = 600.0  # a judge's reply waits behind other traffic on the engine
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class JudgeUnavailable(RuntimeError):
    """The relay could not give a reply; the message says why."""


class RemoteJudge:
    def __init__(self, url: str, token: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self._url = url
        self._token = token
        self._timeout_s = timeout_s

    def complete(self, model: str, messages: list[ChatMessage], sampling: JudgeSampling) -> JudgeReply:
        body = {"model": model, "messages": [asdict(m) for m in messages], "sampling": asdict(sampling)}
        request = urllib.request.Request(
            self._url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
            method="POST",
        )
        try:
            with _OPENER.open(request, timeout=self._timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error") or exc.reason
            except ValueError:
                reason = exc.reason
            raise JudgeUnavailable(str(reason)) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise JudgeUnavailable(f"the judge relay cannot be reached: {exc}") from None
        usage = reply.get("usage") or {}
        return JudgeReply(
            text=str(reply["text"]),
            usage=JudgeUsage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                cached_tokens=int(usage.get("cached_tokens", 0)),
            ),
            finish_reason=str(reply.get("finish_reason") or "stop"),
            model=reply.get("model"),
        )
