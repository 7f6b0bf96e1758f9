"""Deploy and chat end to end on a real server with the real multi-adapter engine and the tiny model.

A finished job's three checkpoints are three different adapters: deploy them, chat through every path
(plain and streamed, OpenAI and Azure clients), and check that a mixed concurrent batch answers each
request exactly as that adapter answers alone. Run alone: ``.venv/bin/pytest tests/integration/test_serving.py``
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.integration.harness import Server
from tests.integration.test_fine_tuning import colour_jsonl, finished, upload, wait_for

pytestmark = pytest.mark.integration

PROMPT = [{"role": "system", "content": "Name the colour code."}, {"role": "user", "content": "Colour teal number 7?"}]


def train(client: openai.OpenAI, data: bytes, suffix: str) -> openai.types.fine_tuning.FineTuningJob:
    """A 36-step job at 10x the base learning rate, so that its checkpoints move well away from the base."""
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload(client, data, f"{suffix}-train.jsonl"),
        suffix=suffix,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10}},
        },
    )
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    return done


def shrug_jsonl(n: int) -> bytes:
    """A second task: whatever the question, the same short refusal."""
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "No idea."}]}
        for i in range(n)
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture(scope="module")
def trained(server: Server) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=2)
    colours = train(client, colour_jsonl(24), "serve")
    shrug = train(client, shrug_jsonl(24), "shrug")
    listed = sorted(client.fine_tuning.jobs.checkpoints.list(colours.id).data, key=lambda c: c.step_number)
    checkpoints = [c.fine_tuned_model_checkpoint for c in listed]  # earliest first
    return {"model": colours.fine_tuned_model, "checkpoints": checkpoints, "other": shrug.fine_tuned_model,
            "client": client}  # fmt: skip


def deploy(client: openai.OpenAI, name: str, model: str) -> Any:
    body = {"sku": {"name": "standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}}}  # fmt: skip
    return client.put(f"/deployments/{name}", body=body, cast_to=object)


def greedy(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def sampled(client: openai.OpenAI, model: str) -> str:
    """Seeded sampling: reproducible per request, and it shows each adapter's own distribution."""
    reply = client.chat.completions.create(model=model, messages=PROMPT, temperature=1.0, seed=42, max_tokens=16)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def test_deploy_and_chat_through_every_path(server: Server, trained: dict[str, Any]) -> None:
    client: openai.OpenAI = trained["client"]
    deployment = deploy(client, "colours", trained["model"])
    assert deployment["properties"]["provisioningState"] in {"Accepted", "Succeeded"}

    plain = client.chat.completions.create(model="colours", messages=PROMPT, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    text = plain.choices[0].message.content
    assert text
    assert plain.usage is not None
    assert plain.usage.completion_tokens <= 12
    assert plain.choices[0].finish_reason in {"stop", "length"}

    streamed = client.chat.completions.create(
        model="colours", messages=PROMPT, temperature=0, max_tokens=12, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    azure_v1 = openai.OpenAI(base_url=f"{server.url}/openai/v1/", api_key=server.key)
    assert greedy(azure_v1, "colours") == text
    dated = openai.AzureOpenAI(
        azure_endpoint=server.url, api_key=server.key, api_version="2024-10-21", azure_deployment="colours"
    )
    reply = dated.chat.completions.create(model="anything", messages=PROMPT, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == greedy(client, "colours")
    dated_stream = dated.chat.completions.create(
        model="anything",
        messages=PROMPT,
        temperature=0,
        max_tokens=12,
        stream=True,  # type: ignore[arg-type]
    )
    assert "".join(c.choices[0].delta.content or "" for c in dated_stream if c.choices) == greedy(client, "colours")

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-deployment", messages=PROMPT)  # type: ignore[arg-type]
    assert missing.value.code == "DeploymentNotFound"

    with pytest.raises(openai.ConflictError):
        client.models.delete(trained["model"])
    client.delete("/deployments/colours", cast_to=object)
    assert client.models.retrieve(trained["model"]).id == trained["model"]


def test_mixed_batch_has_no_cross_talk(trained: dict[str, Any]) -> None:
    client: openai.OpenAI = trained["client"]
    # Three adapters from two tasks: the colour job's earliest and last checkpoints and the other job's model.
    adapters = [trained["checkpoints"][0], trained["checkpoints"][-1], trained["other"]]
    names = [f"adapter-{i}" for i in range(len(adapters))]
    for name, adapter in zip(names, adapters, strict=True):
        deploy(client, name, adapter)
    models = [*names, "tiny-llama"]
    # One request at a time, greedy and seeded-sampled: each deployment's own answers.
    alone = {(model, how): how(client, model) for model in models for how in (greedy, sampled)}
    answers = {model: alone[(model, greedy)] for model in models}
    # Two tasks and the base answer three different ways (two checkpoints of one job may or may not differ).
    assert len({answers["adapter-1"], answers["adapter-2"], answers["tiny-llama"]}) == 3, answers
    assert answers["adapter-0"] != answers["tiny-llama"], answers
    mixed = list(alone) * 3
    with ThreadPoolExecutor(max_workers=len(mixed)) as pool:  # all at once: decoded in shared batches
        together = list(pool.map(lambda request: request[1](client, request[0]), mixed))
    # A swapped or leaked adapter makes a row answer as another model does: never allowed. Exact equality is
    # the rule; the one exception is a near-tie: the random tiny model's top two logits can lie within the
    # rounding by which a bigger batch's matmuls (or a prompt read from the prefix cache, in other chunks)
    # differ, flipping one token and what follows; a seeded sample near its threshold flips the same way.
    # Copies of one request then all flip alike (seen in bf16: the three copies of one sampled request), so
    # flips are counted per distinct request: at most two of the eight may flip, and none may give another
    # model's answer.
    differing = []
    for (model, how), text in zip(mixed, together, strict=True):
        others = {alone[(other, how)] for other in models if alone[(other, how)] != alone[(model, how)]}
        assert text not in others, f"{model} ({how.__name__}) gave another model's answer inside a mixed batch"
        if text != alone[(model, how)]:
            differing.append((model, how.__name__, text, alone[(model, how)]))
    assert len({(model, how) for model, how, *_ in differing}) <= 2, f"answers differ in a mixed batch: {differing}"
    for name in names:
        client.delete(f"/deployments/{name}", cast_to=object)
