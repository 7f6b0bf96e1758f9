"""Reinforcement jobs taken through a worker's start (claim, file checks, spec): the ``auto`` hyperparameters
resolved and echoed on every layout with the trainer's group size following ``compute_multiplier``, and
continuous fine-tuning on top of a supervised fine-tune, whose adapter the trainer starts from and measures
its KL against.

Run: .venv/bin/pytest tests/unit/api/test_rft_start.py -q
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.api.conftest import Api
from tests.unit.api.test_fine_tuning_api import create, upload
from tests.unit.api.test_rft_api import rft_body, rft_jsonl
from tunery.domain.ids import new_id
from tunery.domain.jobs import Hyperparameters, Job, JobStatus, Method
from tunery.domain.models import FineTunedModel
from tunery.storage import JobStore, ModelStore
from tunery.training import progress as control
from tunery.training.loop import Setup, load_base_model, run
from tunery.training.lora import add_adapter, save_adapter
from tunery.training.packing import collate_trees, use_varlen_attention
from tunery.training.progress import ProgressKind, ProgressReader, ProgressWriter
from tunery.training.rft import GrpoObjective, _token_log_probs
from tunery.training.spec import LoraSpec, TrainingSpec

DATED = "api-version=2025-04-01-preview"


def start(api: Api, job_id: str) -> TrainingSpec:
    """What a worker does with a new job: claim it, check its files (resolving ``auto``), start the trainer."""
    claimed = api.services.runs.claim_next("worker-test")
    assert claimed is not None
    assert claimed.id == job_id
    queued = api.services.runs.validate(claimed)
    assert queued is not None
    assert queued.status is JobStatus.QUEUED, queued.error
    spec = api.services.runs.start(queued)
    assert spec is not None
    return spec


def shown(api: Api, job_id: str) -> dict[str, dict[str, Any]]:
    """The job as each layout returns it."""
    urls = {
        "/v1": f"/v1/fine_tuning/jobs/{job_id}",
        "/openai/v1": f"/openai/v1/fine_tuning/jobs/{job_id}",
        "dated": f"/openai/fine_tuning/jobs/{job_id}?{DATED}",
    }
    out = {}
    for layout, url in urls.items():
        response = api.client.get(url, headers={"api-key": api.key})
        assert response.status_code == 200, response.text
        out[layout] = response.json()
    return out


@pytest.mark.parametrize(
    ("compute_multiplier", "echoed", "group_size"),
    [(None, 1.0, 4), (2, 2, 8), (0.25, 0.25, 2), (10, 10, 40)],
    ids=["auto", "2", "0.25", "10"],
)
def test_auto_rft_hyperparameters_are_resolved_at_start_and_echoed_on_every_layout(
    api: Api, compute_multiplier: float | None, echoed: float, group_size: int
) -> None:
    files = (upload(api, rft_jsonl(10)), upload(api, rft_jsonl(10)))
    hyper = {} if compute_multiplier is None else {"hyperparameters": {"compute_multiplier": compute_multiplier}}
    created = create(api, rft_body(files, **hyper))
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    before = shown(api, job_id)
    assert before["/v1"]["method"]["reinforcement"]["hyperparameters"]["eval_interval"] == "auto"
    assert before["dated"]["method"]["reinforcement"]["hyperparameters"]["eval_interval"] == -1

    spec = start(api, job_id)

    # 10 prompts: 100 // 10 = 10 epochs (too few examples for 3); batch max(1, min(8, 10 // 8)) = 1; 100 steps,
    # evaluated about 10 times: every 10 steps; 5 samples per validation prompt; effort default.
    want = {
        "n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 1.0, "eval_interval": 10, "eval_samples": 5,
        "compute_multiplier": echoed, "reasoning_effort": "default",
    }  # fmt: skip
    for layout, job in shown(api, job_id).items():
        assert job["method"]["reinforcement"]["hyperparameters"] == want, layout
        assert job["hyperparameters"] == {k: want[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    assert (spec.method, spec.n_epochs, spec.batch_size) == ("reinforcement", 10, 1)
    assert spec.rft_group_size == group_size  # max(2, min(64, round(4 × compute_multiplier)))
    assert (spec.rft_eval_interval, spec.rft_eval_samples) == (10, 5)
    assert spec.rft_max_new_tokens == 256  # reasoning_effort default: medium's budget
    assert spec.init_adapter_dir is None  # a base model: the KL reference is the adapter disabled


# ------------------------------------------------------------------------------------------------ continuous
def supervised_fine_tune(api: Api, tiny_model_dir: Path, name: str = "tiny-llama.ft-sft") -> tuple[str, Path]:
    """A succeeded supervised job's model with a real (trained-looking) adapter, as the worker registers it."""
    torch.manual_seed(3)
    model = add_adapter(load_base_model(tiny_model_dir, torch.device("cpu")), LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.2)  # far from the base model
    folder = save_adapter(model, api.settings.data_dir / "sft-adapter")
    job = Job(
        id=new_id("ftjob"), project_id=api.project_id, created_at=1, model="tiny-llama", base_model="tiny-llama",
        training_file="file-x", validation_file=None, method=Method.SUPERVISED, hyperparameters=Hyperparameters(),
        seed=1, status=JobStatus.SUCCEEDED, fine_tuned_model=name,
    )  # fmt: skip
    JobStore(api.db).insert(job)
    key = f"adapters/{job.id}/step-8"
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        api.blobs.write(f"{key}/{filename}", [(folder / filename).read_bytes()])
    ModelStore(api.db).insert(
        FineTunedModel(id=name, project_id=api.project_id, job_id=job.id, base_model="tiny-llama",
                       parent_model=None, adapter_key=key, created_at=1)
    )  # fmt: skip
    return name, folder


def test_rft_on_a_supervised_fine_tune_starts_from_its_adapter_and_measures_kl_against_it(
    api: Api, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, parent_dir = supervised_fine_tune(api, tiny_model_dir)
    files = (upload(api, rft_jsonl(10)), upload(api, rft_jsonl(10)))
    created = create(api, {**rft_body(files), "model": parent})
    assert created.status_code == 200, created.text
    job = created.json()
    assert (job["model"], job["method"]["type"]) == (parent, "reinforcement")

    spec = start(api, job["id"])

    assert spec.init_adapter_dir is not None
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        assert (Path(spec.init_adapter_dir) / filename).read_bytes() == (parent_dir / filename).read_bytes()
    assert Path(spec.base_model_dir).resolve() == tiny_model_dir.resolve()
    assert shown(api, job["id"])["/v1"]["model"] == parent

    # The trainer, from this spec (one short step): at its first step the policy and the KL reference are both
    # the parent (the base model, the adapter disabled, is far from it), so the first step pays no KL.
    setup = Setup(torch.device("cpu"), None, 256, 4096)
    batch = collate_trees([([1, 5, 9, 30, 31], [[7, 8, 2], [9, 10]])])

    def log_probs(model: Any) -> torch.Tensor:
        with torch.no_grad():
            return _token_log_probs(model, batch, setup)

    base = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    want = log_probs(add_adapter(base, LoraSpec(r=4, alpha=8), parent_dir))
    seen: dict[str, Any] = {}
    real_step = GrpoObjective.step

    def first_step(self: GrpoObjective, model: Any, *args: Any) -> tuple[dict[str, Any], int]:
        if not seen:
            seen["policy"] = log_probs(model)
            with self._reference(model):
                seen["reference"] = log_probs(model)
            with model.disable_adapter():
                seen["base"] = log_probs(model)
        metrics, tokens = real_step(self, model, *args)
        seen.setdefault("kl", metrics["kl"])
        return metrics, tokens

    monkeypatch.setattr(GrpoObjective, "step", first_step)
    monkeypatch.setattr(control, "requested", lambda _run_dir: None)
    short = dataclasses.replace(
        spec, n_epochs=1, batch_size=10, rft_group_size=2, rft_max_new_tokens=4, validation_file=None, num_threads=1
    )
    run(short, ProgressWriter(short.run_path))

    assert [r.kind for r in ProgressReader(short.run_path).read_new()][-1] is ProgressKind.COMPLETED
    torch.testing.assert_close(seen["policy"], want, rtol=1e-4, atol=1e-5)  # starts from the parent adapter
    torch.testing.assert_close(seen["reference"], want, rtol=1e-4, atol=1e-5)  # ... and measures KL against it
    assert (seen["base"] - want).abs().max() > 1e-2
    assert seen["kl"] < 1e-6
