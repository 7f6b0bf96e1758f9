"""DPO jobs end to end on a real server + worker + trainer subprocess, with the tiny model and tests/data.

The official client uploads the preference files, creates a ``method: dpo`` job, polls it to the end and reads
its events, checkpoints and results.csv; then SFT-then-DPO continues a supervised fine-tune, and a pause and
resume works as for supervised jobs. Run alone: ``.venv/bin/pytest tests/integration/test_dpo_jobs.py``
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.harness import Server
from tests.integration.test_fine_tuning import (
    at_step,
    azure_for,
    client_for,
    colour_jsonl,
    finished,
    results,
    upload,
    wait_for,
)

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
DPO_COLUMNS = [
    "step", "train_loss", "train_reward_accuracy", "train_reward_margin", "train_chosen_reward",
    "train_rejected_reward", "valid_loss", "valid_reward_accuracy", "valid_reward_margin", "full_valid_loss",
    "full_valid_reward_accuracy", "full_valid_reward_margin",
]  # fmt: skip


@pytest.fixture(scope="module")
def prefs(server: Server) -> dict[str, str]:
    client = client_for(server)
    return {
        name: upload(client, (DATA / f"preference_{name}.jsonl").read_bytes(), f"preference_{name}.jsonl")
        for name in ("train", "valid")
    }


def dpo_method(**hyperparameters: object) -> dict[str, object]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def test_a_dpo_job_learns_the_preference_on_held_out_pairs(server: Server, prefs: dict[str, str]) -> None:
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=prefs["train"],
        validation_file=prefs["valid"],
        seed=7,
        suffix="dpo",
        method=dpo_method(beta=0.1, n_epochs=3, batch_size=8, learning_rate_multiplier=10),
    )
    assert job.method is not None
    assert job.method.type == "dpo"
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"tiny-llama.ft-{job.id.split('-', 1)[1]}-dpo"
    assert done.method is not None
    assert done.method.dpo is not None
    assert done.method.dpo.hyperparameters is not None
    assert done.method.dpo.hyperparameters.beta == 0.1

    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
    (before,) = [e for e in events if e.message.startswith("Before training:")]
    assert before.data is not None
    at_start = before.data["full_valid_reward_accuracy"]
    assert any("reward accuracy=" in e.message for e in events if e.message.startswith("Step 24/24"))

    rows = results(client, done)
    assert list(rows[0]) == DPO_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    full = [float(r["full_valid_reward_accuracy"]) for r in rows if r["full_valid_reward_accuracy"]]
    assert len(full) == 3
    print(f"\nDPO on tiny-llama: validation reward accuracy {at_start:.2f} at step 0 → {full[-1]:.2f} at the end")
    assert full[-1] >= 0.75
    assert full[-1] > at_start
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [24, 16, 8]
    assert (checkpoints[0].metrics.model_extra or {})["full_valid_reward_accuracy"] == full[-1]


def test_sft_then_dpo_continues_the_supervised_model(server: Server, prefs: dict[str, str]) -> None:
    client = client_for(server)
    sft_file = upload(client, colour_jsonl(16), "sft.jsonl")
    sft = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=sft_file,
        # 10x the base rate: the parent moves well away from the base, so step 1's ln 2 shows the reference is the
        # parent (a base-model reference would give another loss).
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}},
        },
    )
    sft_done = wait_for(client, sft.id, finished)
    assert sft_done.status == "succeeded", sft_done.error

    azure = azure_for(server)  # the Azure DPO how-to's spelling: beta directly under method.dpo
    dpo = azure.fine_tuning.jobs.create(
        model=sft_done.fine_tuned_model,
        training_file=prefs["train"],
        method={"type": "dpo", "dpo": {"beta": 0.2, "l2_multiplier": 0.1}},
        extra_body={"prompt_loss_weight": 0.1},
    )
    assert dpo.status == "pending"
    done = wait_for(azure, dpo.id, finished)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("tiny-llama.ft-")
    assert done.method is not None
    assert done.method.dpo is not None
    assert done.method.dpo.hyperparameters is not None
    assert done.method.dpo.hyperparameters.beta == 0.2
    assert (done.model_extra or {}).get("prompt_loss_weight") == 0.1
    first = results(azure, done)[0]
    assert float(first["train_loss"]) == pytest.approx(0.6931, abs=1e-3), "step 1 starts at the parent (reference)"
    assert done.fine_tuned_model in {m.id for m in client.models.list()}


def test_pause_and_resume_a_dpo_job(server: Server, prefs: dict[str, str]) -> None:
    azure = azure_for(server)
    job = azure.fine_tuning.jobs.create(
        model="tiny-llama", training_file=prefs["train"], method=dpo_method(n_epochs=10, batch_size=2)
    )
    wait_for(azure, job.id, at_step(3))
    assert azure.fine_tuning.jobs.pause(job.id).status == "pausing"
    paused = wait_for(azure, job.id, lambda j: getattr(j, "status", None) in {"paused", "succeeded", "failed"})
    assert paused.status == "paused"
    assert azure.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number == paused.model_extra["progress"]["step"]

    assert azure.fine_tuning.jobs.resume(job.id).status == "resuming"
    done = wait_for(azure, job.id, finished)
    assert done.status == "succeeded", done.error
    steps = [int(r["step"]) for r in results(azure, done)]
    assert steps == list(range(1, 321)), "the resumed run continues; step numbers do not restart"
