"""Checkpoint sharing between projects through ``client.fine_tuning.checkpoints.permissions``.

Project B cannot see project A's model until an admin key of A shares it; then B can deploy it, chat with
it and fine-tune from it; after the share is revoked B can do none of that. A member key cannot share.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.integration.harness import Server, tunery
from tests.integration.test_fine_tuning import colour_jsonl, finished, upload, wait_for

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Colour teal number 7?"}]


def deploy(client: openai.OpenAI, name: str, model: str) -> Any:
    body = {"sku": {"name": "standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}}}  # fmt: skip
    return client.put(f"/deployments/{name}", body=body, cast_to=object)


def test_share_deploy_fine_tune_and_revoke(server: Server) -> None:
    a_member = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    admin_key = tunery(server.env, "keys", "create", "--project", "itest", "--admin")
    a_admin = openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin_key, max_retries=0)
    b = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.other_key, max_retries=0)

    job = a_member.fine_tuning.jobs.create(
        model="tiny-llama", training_file=upload(a_member, colour_jsonl(12), "share.jsonl"),
        hyperparameters={"n_epochs": 1}, suffix="shared",
    )  # fmt: skip
    done = wait_for(a_member, job.id, finished)
    assert done.status == "succeeded", done.error
    model = done.fine_tuned_model
    assert model

    with pytest.raises(openai.NotFoundError):
        b.models.retrieve(model)
    with pytest.raises(openai.BadRequestError):
        deploy(b, "borrowed", model)
    b_data = upload(b, colour_jsonl(12, offset=50), "b.jsonl")
    with pytest.raises(openai.BadRequestError):
        b.fine_tuning.jobs.create(model=model, training_file=b_data)

    with pytest.raises(openai.PermissionDeniedError) as member:
        a_member.fine_tuning.checkpoints.permissions.create(model, project_ids=["intruder"])
    assert "admin key" in member.value.message
    with pytest.raises(openai.PermissionDeniedError):
        b.fine_tuning.checkpoints.permissions.create(model, project_ids=["itest"])

    granted = a_admin.fine_tuning.checkpoints.permissions.create(model, project_ids=["intruder"]).data
    (permission,) = granted
    assert permission.object == "checkpoint.permission"
    assert permission.project_id.startswith("proj-")
    listed = list(a_admin.fine_tuning.checkpoints.permissions.list(model))
    assert [p.id for p in listed] == [permission.id]
    with pytest.raises(openai.BadRequestError):
        a_admin.fine_tuning.checkpoints.permissions.create(model, project_ids=["no-such-project"])

    assert b.models.retrieve(model).id == model
    deployment = deploy(b, "borrowed", model)
    assert deployment["properties"]["model"]["name"] == model
    reply = b.chat.completions.create(model="borrowed", messages=PROMPT, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content is not None
    child = b.fine_tuning.jobs.create(model=model, training_file=b_data, hyperparameters={"n_epochs": 1})
    child_done = wait_for(b, child.id, finished)
    assert child_done.status == "succeeded", child_done.error
    assert child_done.fine_tuned_model
    with pytest.raises(openai.NotFoundError):  # sharing a checkpoint shares nothing else
        b.fine_tuning.jobs.retrieve(job.id)

    deleted = a_admin.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=model)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.create(model="borrowed", messages=PROMPT, max_tokens=4)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        deploy(b, "borrowed-again", model)
    with pytest.raises(openai.NotFoundError):
        b.models.retrieve(model)
    assert b.models.retrieve(child_done.fine_tuned_model).id == child_done.fine_tuned_model  # B's own stays
