"""Export writers and the import check, against plain peft / transformers / gguf on the tiny model.

An adapter made by plain peft (random B so it changes answers) is exported three ways; each export is loaded
by the other tool with no Tunery code and must answer as peft does on the same base.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.ceilings import ceiling
from tunery.catalog.export import export_model, write_archive
from tunery.catalog.peft_adapter import AdapterProblem, PeftAdapter, check_against_base
from tunery.catalog.safetensors_stream import SafetensorsReader, read_infos
from tunery.testing.tiny_model import build_tiny_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["hello world", "The colour teal is number"]


def make_adapter(base: Path, out: Path, *, r: int = 4, seed: int = 1) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.3)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    base = build_tiny_model(root / "base")
    adapter = make_adapter(base, root / "adapter")
    for fmt in ("peft", "merged", "gguf"):
        export_model(fmt, adapter, base, root / fmt, base_id="org/tiny-llama", model_name="tiny.ft-abc")  # type: ignore[arg-type]
    return {"root": root, "base": base, "adapter": adapter}


def greedy(model: torch.nn.Module, tokenizer: object, prompt: str) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # type: ignore[operator]
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=10, do_sample=False)[0].tolist()  # type: ignore[attr-defined, no-any-return]


def reference(setup: dict[str, Path]) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    return PeftModel.from_pretrained(base, setup["adapter"]).eval()


def test_peft_export_names_the_portable_base_and_answers_like_peft(setup: dict[str, Path]) -> None:
    import json

    config = json.loads((setup["root"] / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-llama"
    exported = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32), setup["root"] / "peft"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(setup["base"])
    plain = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32).eval()
    ref = reference(setup)
    assert any(greedy(ref, tokenizer, p) != greedy(plain, tokenizer, p) for p in PROMPTS)  # the adapter matters
    for prompt in PROMPTS:
        assert greedy(exported, tokenizer, prompt) == greedy(ref, tokenizer, prompt)


def test_merged_folder_loads_with_plain_transformers_and_answers_like_peft(setup: dict[str, Path]) -> None:
    folder = setup["root"] / "merged"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    assert "<|im_start|>" in tokenizer.chat_template
    ref = reference(setup)
    for prompt in PROMPTS:
        assert greedy(merged, tokenizer, prompt) == greedy(ref, tokenizer, prompt)


def test_gguf_adapter_has_llama_cpp_lora_names_shapes_and_metadata(setup: dict[str, Path]) -> None:
    reader = gguf.GGUFReader(setup["root"] / "gguf" / "tiny.ft-abc-lora.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)
    tensors = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    assert len(tensors) == 2 * 2 * len(TARGETS)  # two layers, A and B per module
    # GGUF lists dimensions innermost first: lora_a is [in, r], lora_b is [r, out] (hidden 64, kv 2x16, ffn 128)
    assert tensors["blk.0.attn_q.weight.lora_a"] == [64, 4]
    assert tensors["blk.0.attn_q.weight.lora_b"] == [4, 64]
    assert tensors["blk.1.attn_k.weight.lora_b"] == [4, 32]
    assert tensors["blk.1.ffn_down.weight.lora_a"] == [128, 4]
    with SafetensorsReader(setup["adapter"] / "adapter_model.safetensors") as peft_file:
        a = peft_file.array("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight")
    stored = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight.lora_a")
    assert np.array_equal(np.asarray(stored.data).reshape(a.shape), a)


def test_gguf_merged_model_reads_back_and_computes_what_peft_computes(setup: dict[str, Path]) -> None:
    folder = setup["root"] / "gguf"
    reader = gguf.GGUFReader(folder / "tiny.ft-abc.gguf")
    fields = {n: f.contents() for n, f in reader.fields.items() if not n.startswith("tokenizer.ggml.t")}
    assert fields["general.type"] == "model"
    assert fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= names
    # transformers reads llama GGUF (undoing llama.cpp's Q/K row order): the logits match peft's to F16 precision
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="tiny.ft-abc.gguf", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(setup["base"])
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = reference(setup)(ids).logits, model(ids).logits
    assert torch.allclose(expected, got, atol=5e-3), (expected - got).abs().max()


def test_the_base_model_alone_as_bf16_gguf_reads_back_as_the_base(setup: dict[str, Path], tmp_path: Path) -> None:
    """What the llama.cpp serving backend writes where BF16 decodes faster: BF16 matrices, F32 vectors, and
    logits of the base model to bfloat16 precision."""
    from tunery.catalog.gguf_export import write_merged_gguf

    write_merged_gguf(None, setup["base"], tmp_path / "base.gguf", name="tiny", base_id="org/tiny-llama",
                      matrices="BF16")  # fmt: skip
    reader = gguf.GGUFReader(tmp_path / "base.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="base.gguf", dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32).eval()
    q = "model.layers.0.self_attn.v_proj.weight"  # not permuted for rope: compared as stored
    assert torch.equal(model.state_dict()[q], plain.state_dict()[q].to(torch.bfloat16).float())
    ids = AutoTokenizer.from_pretrained(setup["base"])(PROMPTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = plain(ids).logits, model(ids).logits
    assert torch.allclose(expected, got, atol=3e-2), (expected - got).abs().max()


def llama_server_binary() -> str | None:
    """``llama-server`` on PATH, or in ``$LLAMA_CPP_DIR/build/bin`` (bench/serve_http.py builds one there)."""
    found = shutil.which("llama-server")
    if found is None and os.environ.get("LLAMA_CPP_DIR"):
        candidate = Path(os.environ["LLAMA_CPP_DIR"]) / "build" / "bin" / "llama-server"
        found = str(candidate) if candidate.is_file() else None
    return found


def llama_cpp_greedy(binary: str, model: Path, prompts: list[list[int]], lora: Path | None = None) -> list[list[int]]:
    """Greedy continuations from a real llama.cpp server for prompts given as token ids (no template, no BOS)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    args = [binary, "-m", str(model), "--port", str(port), "--host", "127.0.0.1", "-c", "256", "-np", "1", "-t", "1"]
    proc = subprocess.Popen([*args, *(["--lora", str(lora)] if lora else [])], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ceiling(60)
        while True:
            assert proc.poll() is None, f"llama-server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "llama-server did not become healthy"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling a starting server's /health: a condition, with a ceiling
        answers = []
        for ids in prompts:
            body = {"prompt": ids, "n_predict": 10, "temperature": 0, "top_k": 1, "cache_prompt": False,
                    "return_tokens": True, "ignore_eos": True}  # fmt: skip
            answers.append(httpx.post(f"{url}/completion", json=body, timeout=ceiling(30)).json()["tokens"])
        return answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_llama_cpp_answers_like_peft(setup: dict[str, Path], tmp_path: Path) -> None:
    """Both GGUF files in llama.cpp itself: the merged model, and the base with the LoRA GGUF applied on top."""
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("no llama.cpp binary (llama-server on PATH or in $LLAMA_CPP_DIR/build/bin); GGUF files "
                    "checked with gguf.GGUFReader and transformers instead")  # fmt: skip
    from tunery.catalog.gguf_export import write_merged_gguf

    tokenizer = AutoTokenizer.from_pretrained(setup["base"])
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    ref = reference(setup)
    with torch.no_grad():
        expected = [ref.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, min_new_tokens=10)[0]
                    [len(ids):].tolist() for ids in prompts]  # fmt: skip
    # The base alone as GGUF: "merged" with an adapter whose B is zero (peft's initial state) is the base itself.
    plain = AutoModelForCausalLM.from_pretrained(setup["base"])
    get_peft_model(plain, LoraConfig(r=1, target_modules=["q_proj"])).save_pretrained(tmp_path / "zero")
    with PeftAdapter(tmp_path / "zero") as adapter:
        write_merged_gguf(adapter, setup["base"], tmp_path / "base.gguf", name="tiny", base_id="org/tiny-llama")

    folder = setup["root"] / "gguf"
    assert llama_cpp_greedy(binary, folder / "tiny.ft-abc.gguf", prompts) == expected
    assert llama_cpp_greedy(binary, tmp_path / "base.gguf", prompts, lora=folder / "tiny.ft-abc-lora.gguf") == expected
    assert llama_cpp_greedy(binary, tmp_path / "base.gguf", prompts) != expected  # the adapter is what answers


def test_archive_has_a_top_folder_and_a_checksum(setup: dict[str, Path], tmp_path: Path) -> None:
    import hashlib
    import tarfile

    size, digest = write_archive(setup["root"] / "peft", tmp_path / "tiny-peft.tar")
    data = (tmp_path / "tiny-peft.tar").read_bytes()
    assert size == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
    with tarfile.open(tmp_path / "tiny-peft.tar") as archive:
        assert sorted(archive.getnames()) == ["tiny-peft/README.md", "tiny-peft/adapter_config.json",
                                              "tiny-peft/adapter_model.safetensors"]  # fmt: skip


def test_the_import_check_names_what_does_not_fit(setup: dict[str, Path], tmp_path: Path) -> None:
    base_infos = read_infos(setup["base"] / "model.safetensors")
    with PeftAdapter(setup["adapter"]) as good:
        check_against_base(good, base_infos, "tiny-llama")

    other_base = tmp_path / "wide"
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(other_base)
    wide = make_adapter(other_base, tmp_path / "wide-adapter")
    wrong = r"LoRA shapes A \[4, 128\] / B \[96, 4\].*128->64"
    with PeftAdapter(wide) as adapter, pytest.raises(AdapterProblem, match=wrong):
        check_against_base(adapter, base_infos, "tiny-llama")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(setup["adapter"], corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterProblem, match=r"not a valid safetensors file.*truncated or corrupt"):
        PeftAdapter(corrupt)

    missing = tmp_path / "missing"
    shutil.copytree(setup["adapter"], missing)
    text = (missing / "adapter_config.json").read_text().replace('"q_proj"', '"qkv_fused"')
    (missing / "adapter_config.json").write_text(text)
    with PeftAdapter(missing) as adapter, pytest.raises(AdapterProblem, match=r"target_modules \['qkv_fused'\]"):
        check_against_base(adapter, base_infos, "tiny-llama")
