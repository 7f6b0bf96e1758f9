"""Moving in and out on real servers: export, import and migration, checked with plain peft / transformers.

A destination server (fp32 serving, so greedy answers are comparable token for token with plain peft) trains,
exports and imports; the session server plays the migration source (it speaks the same API as OpenAI).
Run alone: ``.venv/bin/pytest tests/integration/test_portability.py``
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import openai
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tests.ceilings import ceiling
from tests.integration.harness import Server, free_port, tunery, wait_until_healthy
from tests.integration.test_fine_tuning import colour_jsonl, finished, upload, wait_for
from tunery.testing.fake_hub import TOKEN, FakeHub, fake_hub_server

pytestmark = pytest.mark.integration

PROMPTS = [
    [{"role": "user", "content": "Colour teal number 7?"}],
    [{"role": "system", "content": "Name the colour code."}, {"role": "user", "content": "Colour red number 2?"}],
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[str]:
    with fake_hub_server() as url:
        yield url


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, fake_hub: str) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("dest-data")
    allowed = data_dir / "allowed"
    allowed.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_INFERENCE__DTYPE": "fp32",
        "TUNERY_PORTABILITY__IMPORT_ALLOWED_DIR": str(allowed),
        "TUNERY_PORTABILITY__HF_ENDPOINT": fake_hub,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "dest")
    other_key = tunery(env, "keys", "create", "--project", "someone-else")
    log = data_dir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)
        yield Server(url=url, key=key, other_key=other_key, data_dir=data_dir, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def client_of(server: Server, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or server.key, max_retries=0, timeout=300)


def train(client: openai.OpenAI, *, suffix: str, steps: int = 36, **extra: Any) -> Any:
    """``steps`` 36 moves the tiny model well away from its base (3 epochs of 24 examples, batch 2)."""
    job = client.fine_tuning.jobs.create(
        model=extra.pop("model", "tiny-llama"),
        training_file=upload(client, colour_jsonl(24 if steps == 36 else 2 * steps), f"{suffix}-train.jsonl"),
        suffix=suffix,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 3 if steps == 36 else 1,
                    "batch_size": 2,
                    "learning_rate_multiplier": 10,
                }
            },
        },
        **extra,
    )
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    return done


def tunery_answer(client: openai.OpenAI, model: str, messages: list[dict[str, str]]) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def plain_answer(model: torch.nn.Module, tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Greedy decoding with plain transformers, stopping where Tunery stops (<|endoftext|>, <|im_end|>)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=[0, 2], pad_token_id=2)  # type: ignore[attr-defined]
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def download(server: Server, model: str, key: str | None = None, **params: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/v1/models/{model}/export", params=params,
        headers={"Authorization": f"Bearer {key or server.key}"}, timeout=300,
    )  # fmt: skip


def untar(data: bytes, target: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(target, filter="data")
    (folder,) = list(target.iterdir())
    return folder


def base_model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_export_peft_merged_and_gguf(dest: Server, tiny_model_dir: Path, tmp_path: Path) -> None:
    client = client_of(dest)
    job = train(client, suffix="export", extra_body={"hf_output_repo_name": "me/from-job", "hf_api_token": TOKEN})
    assert (job.model_extra or {})["hf_output_repo_name"] == "me/from-job"
    assert TOKEN not in job.model_dump_json()
    model = job.fine_tuned_model
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    served = [tunery_answer(client, model, messages) for messages in PROMPTS]
    assert served != [plain_answer(base_model(tiny_model_dir), tokenizer, m) for m in PROMPTS]  # training mattered

    peft_response = download(dest, model, format="peft")
    assert peft_response.status_code == 200, peft_response.text
    assert int(peft_response.headers["content-length"]) == len(peft_response.content)
    assert peft_response.headers["x-checksum-sha256"] == hashlib.sha256(peft_response.content).hexdigest()
    peft_dir = untar(peft_response.content, tmp_path / "peft")
    assert json.loads((peft_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    adapted = PeftModel.from_pretrained(base_model(tiny_model_dir), peft_dir).eval()
    assert [plain_answer(adapted, tokenizer, m) for m in PROMPTS] == served

    merged_response = download(dest, model, format="merged")
    assert merged_response.status_code == 200, merged_response.text
    merged_dir = untar(merged_response.content, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert [plain_answer(merged, merged_tokenizer, m) for m in PROMPTS] == served

    lora = download(dest, model, format="gguf", part="adapter")
    assert lora.status_code == 200, lora.text
    (tmp_path / "lora.gguf").write_bytes(lora.content)
    reader = gguf.GGUFReader(tmp_path / "lora.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert "blk.0.attn_q.weight.lora_a" in {t.name for t in reader.tensors}
    whole = download(dest, model, format="gguf")
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as archive:
        names = sorted(Path(n).name for n in archive.getnames())
    assert names == [f"{model}-lora.gguf", f"{model}.gguf"]

    refused = download(dest, model, key=dest.other_key, format="peft")
    assert refused.status_code == 404
    assert "does not exist" in refused.json()["error"]["message"]
    base_refused = download(dest, "tiny-llama", format="peft")
    assert base_refused.status_code == 400
    assert "base model" in base_refused.json()["error"]["message"]
    bad_format = download(dest, model, format="onnx")
    assert bad_format.status_code == 400
    assert "peft, merged, gguf" in bad_format.json()["error"]["message"]

    pushed: Any = client.post(f"/models/{model}/push", cast_to=object,
                              body={"hf_output_repo_name": "me/colours", "hf_token": "hf_test_token"})  # fmt: skip
    assert pushed["repo_id"] == "me/colours"
    (commit,) = [c for c in FakeHub.commits if c["repo"] == "me/colours"]
    assert commit["files"]["adapter_model.safetensors"] == (peft_dir / "adapter_model.safetensors").read_bytes()
    assert "base_model: tiny-llama" in commit["files"]["README.md"].decode()
    with pytest.raises(openai.BadRequestError, match="refused the push"):
        client.post(f"/models/{model}/push", body={"hf_output_repo_name": "me/colours", "hf_token": "wrong"},
                    cast_to=object)  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="token is needed"):
        client.post(f"/models/{model}/push", body={"hf_output_repo_name": "me/colours"}, cast_to=object)

    deadline = time.monotonic() + ceiling(30)  # the outbox pushes the job's model once the job succeeded
    while not any(c["repo"] == "me/from-job" for c in FakeHub.commits) and time.monotonic() < deadline:
        time.sleep(0.2)
    (from_job,) = [c for c in FakeHub.commits if c["repo"] == "me/from-job"]
    assert from_job["files"]["adapter_model.safetensors"] == (peft_dir / "adapter_model.safetensors").read_bytes()
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data]
    assert any(m.startswith(f"Pushed {model} (peft) to the Hugging Face Hub repository me/from-job") for m in events)

    cli_dir = tmp_path / "cli-export"
    env = {**dest.env, "TUNERY_BASE_URL": f"{dest.url}/v1", "TUNERY_API_KEY": dest.key}
    tunery(env, "models", "export", model, "--format", "peft", "-o", str(cli_dir))
    assert (cli_dir / "adapter_model.safetensors").read_bytes() == (peft_dir / "adapter_model.safetensors").read_bytes()


def plain_peft_adapter(base: Path, out: Path, *, seed: int = 3) -> Path:
    """An adapter 'trained elsewhere': plain peft on the same base, B drawn at random so it changes answers."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.3)
    peft_model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-llama"
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def tar_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    return buffer.getvalue()


def import_upload(server: Server, data: bytes, name: str = "adapter.tar.gz", **form: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/import", headers={"Authorization": f"Bearer {server.key}"},
        files={"file": (name, data)}, data=form, timeout=300,
    )  # fmt: skip


def test_import_an_adapter_trained_elsewhere(dest: Server, tiny_model_dir: Path, tmp_path: Path) -> None:
    client = client_of(dest)
    adapter = plain_peft_adapter(tiny_model_dir, tmp_path / "elsewhere")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = [plain_answer(PeftModel.from_pretrained(base_model(tiny_model_dir), adapter), tokenizer, m)
                for m in PROMPTS]  # fmt: skip

    response = import_upload(dest, tar_of(adapter), suffix="mine")
    assert response.status_code == 200, response.text
    model = response.json()["id"]
    assert model.startswith("tiny-llama.imported-")
    assert model.endswith("-mine")
    assert model in {m.id for m in client.models.list()}
    body = {"sku": {"name": "standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}}}  # fmt: skip
    client.put("/deployments/imported", body=body, cast_to=object)
    assert [tunery_answer(client, "imported", m) for m in PROMPTS] == expected
    client.delete("/deployments/imported", cast_to=object)

    further = train(client, suffix="further", model=model)  # continuous fine-tuning from the imported adapter
    assert further.fine_tuned_model
    assert further.fine_tuned_model != model

    wide_base = tmp_path / "wide-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(wide_base)  # fmt: skip
    wrong_shapes = import_upload(dest, tar_of(plain_peft_adapter(wide_base, tmp_path / "wide")))
    assert wrong_shapes.status_code == 400
    assert "LoRA shapes" in wrong_shapes.json()["error"]["message"]

    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapter, corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    bad = import_upload(dest, tar_of(corrupt))
    assert bad.status_code == 400
    assert "not a valid safetensors file" in bad.json()["error"]["message"]

    foreign = tmp_path / "foreign"
    shutil.copytree(adapter, foreign)
    (foreign / "adapter_config.json").write_text(
        (foreign / "adapter_config.json").read_text().replace('"tiny-llama"', '"meta-llama/Llama-3.1-8B"')
    )
    wrong_base = import_upload(dest, tar_of(foreign))
    assert wrong_base.status_code == 400
    message = wrong_base.json()["error"]["message"]
    assert "'meta-llama/Llama-3.1-8B', which is not a base model of this server" in message

    not_an_archive = import_upload(dest, b"just text", name="adapter.txt")
    assert not_an_archive.status_code == 400
    assert "archive" in not_an_archive.json()["error"]["message"]

    outside = client.post  # the official client raises on 400 with the server's message
    with pytest.raises(openai.BadRequestError, match="outside the folder"):
        outside("/models/import", body={"path": str(adapter)}, cast_to=object)
    inside = dest.data_dir / "allowed" / "adapter"
    shutil.copytree(adapter, inside)
    by_path: Any = client.post("/models/import", body={"path": str(inside)}, cast_to=object)
    assert [tunery_answer(client, by_path["id"], m) for m in PROMPTS] == expected


def test_migrate_jobs_from_another_server(server: Server, dest: Server) -> None:
    source_key = tunery(server.env, "keys", "create", "--project", "migration-source")
    source = openai.OpenAI(base_url=f"{server.url}/v1", api_key=source_key, max_retries=0, timeout=300)
    validation = upload(source, colour_jsonl(10, offset=50), "held-out.jsonl")
    first = train(source, suffix="alpha", steps=6, seed=7, metadata={"team": "red"}, validation_file=validation)
    second = train(source, suffix="beta", steps=6, seed=11, metadata={"team": "blue"})
    client = client_of(dest)
    body = {"source_url": f"{server.url}/v1", "api_key": source_key, "base_model": "tiny-llama", "compare": False}

    preview: Any = client.post("/migrations", body={**body, "dry_run": True}, cast_to=object)
    assert (preview["would_move"], preview["moved"], preview["not_moved"]) == (2, 0, 0), preview
    assert {e["status"] for e in preview["entries"]} == {"would_move"}
    assert client.get("/migrations", cast_to=object)["data"] == [], "a dry run records nothing"  # type: ignore[index]

    report: Any = client.post("/migrations", body=body, cast_to=object)
    assert (report["moved"], report["not_moved"]) == (2, 0), report
    by_source = {e["source_job_id"]: e for e in report["entries"]}
    for old in (first, second):
        entry = by_source[old.id]
        assert entry["source_model"] == old.fine_tuned_model
        new = wait_for(client, entry["job_id"], finished)
        assert new.status == "succeeded", new.error
        assert new.seed == old.seed
        assert new.user_provided_suffix == old.user_provided_suffix
        assert new.metadata == {**(old.metadata or {}), "migrated_from": old.id}
        assert new.method.supervised.hyperparameters.n_epochs == 1  # type: ignore[union-attr]
        assert bool(new.validation_file) == bool(old.validation_file)
        # the old id reaches the new fine-tune, in chat and in deployments
        assert tunery_answer(client, old.fine_tuned_model, PROMPTS[0]) == tunery_answer(
            client, new.fine_tuned_model, PROMPTS[0]
        )
    dep = {"sku": {"name": "standard", "capacity": 1},
           "properties": {"model": {"format": "OpenAI", "name": first.fine_tuned_model, "version": "1"}}}  # fmt: skip
    client.put("/deployments/migrated", body=dep, cast_to=object)
    assert tunery_answer(client, "migrated", PROMPTS[0]) == tunery_answer(client, first.fine_tuned_model, PROMPTS[0])
    client.delete("/deployments/migrated", cast_to=object)

    again: Any = client.post("/migrations", body={**body, "compare": True}, cast_to=object)
    assert (again["moved"], again["already_moved"], again["not_moved"]) == (0, 2, 0)
    compared = {e["source_job_id"]: e["comparisons"] for e in again["entries"]}
    rows = compared[first.id]
    assert rows
    assert all(row["old"] is not None and row["new"] is not None for row in rows)
    assert len(client.fine_tuning.jobs.list(metadata={"migrated_from": first.id}).data) == 1  # type: ignore[call-arg]

    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(openai.BadRequestError, match="Cannot reach the source") as gone:
        client.post("/migrations", body={**body, "source_url": unreachable}, cast_to=object)
    assert gone.value.code == "source_unreachable"
    with pytest.raises(openai.BadRequestError, match="refused the API key") as refused:
        client.post("/migrations", body={**body, "api_key": "wrong"}, cast_to=object)
    assert refused.value.code == "source_unauthorized"
