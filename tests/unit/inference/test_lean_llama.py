"""The lean llama forward (``lean_llama``): it is the one serving llama models, other architectures and adapters
it cannot apply fall back to transformers' forward, its logits match transformers', and adapters on every
projection (MLP included, mixed ranks, mixed with base rows) give peft's greedy tokens.

Run: ``.venv/bin/pytest tests/unit/inference/test_lean_llama.py -q``
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.inference.conftest import TINY, Reference, quiet_peft, request, run, token_ids
from tunery.inference import decode_attention, lean_llama
from tunery.inference.adapters import LoraAdapter, LoraModule
from tunery.inference.batching import LoadedModel
from tunery.inference.decode_attention import DecodeAttention
from tunery.inference.hf_engine import HFEngine
from tunery.inference.kv_cache import SlotKVCache
from tunery.inference.lean_llama import LeanLlama, unsupported_reason

PROMPTS = ([5, 17, 99, 230, 41, 77], [300, 12], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [401])


class Calls:
    """Counts forward passes through the lean forward and through the transformers model of one engine."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.lean = 0
        self.transformers = 0
        self._loaded = loaded
        self._hook = loaded.model.register_forward_pre_hook(self._count_transformers)
        if loaded.lean is not None:
            forward = loaded.lean.forward

            def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
                self.lean += 1
                return forward(*args, **kwargs)

            loaded.lean.forward = counted  # type: ignore[method-assign]

    def _count_transformers(self, *_: object) -> None:
        self.transformers += 1

    def close(self) -> None:
        self._hook.remove()
        if self._loaded.lean is not None and "forward" in vars(self._loaded.lean):
            del self._loaded.lean.forward


def loaded_model(engine: HFEngine) -> LoadedModel:
    run(engine, request([5, 6], max_tokens=1))  # loads the model
    return engine._runtimes[TINY].loaded


@pytest.fixture(params=["fused", "packed", "packed-plain-lora"])
def counted(
    tiny_model_dir: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[HFEngine, Calls]]:
    """An fp32 engine on the lean forward, with plain fused weights or oneDNN-packed ones (bf16's default).

    Packed, LoRA deltas of few columns are packed block products too; ``packed-plain-lora`` turns that off.
    """
    packed = request.param != "fused"
    if packed:
        monkeypatch.setattr(lean_llama, "PACKED_DTYPES", {torch.float32})
    if request.param == "packed-plain-lora":
        monkeypatch.setattr(lean_llama, "_DENSE_RANK", 0)
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", max_loaded_adapters=4) as engine:
        loaded = loaded_model(engine)
        assert loaded.lean is not None
        assert loaded.lean.packed is packed
        calls = Calls(loaded)
        try:
            yield engine, calls
        finally:
            calls.close()


def test_llama_models_are_served_by_the_lean_forward(
    counted: tuple[HFEngine, Calls], reference: Reference, adapter_dirs: dict[str, Path]
) -> None:
    engine, calls = counted
    jobs = [(p, a) for p in PROMPTS for a in (None, "alpha", "gamma")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, engine, request(p, adapter=a, adapter_dirs=adapter_dirs)) for p, a in jobs]
        for (p, a), future in zip(jobs, futures, strict=True):
            assert token_ids(future.result(timeout=120)) == reference.greedy(p, 16, a)
    assert calls.lean >= 16  # every prefill chunk and decode step
    assert calls.transformers == 0


def test_the_lean_forward_can_be_turned_off(tiny_model_dir: Path, reference: Reference) -> None:
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", lean_forward=False) as engine:
        loaded = loaded_model(engine)
        assert loaded.lean is None
        calls = Calls(loaded)
        assert token_ids(run(engine, request(PROMPTS[0]))) == reference.greedy(PROMPTS[0], 16)
        assert calls.transformers >= 16
        calls.close()


@pytest.mark.parametrize("lean", [True, False])
def test_the_server_setting_chooses_the_forward(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    from tunery.bootstrap import build_engine
    from tunery.config import Settings

    monkeypatch.setenv("TUNERY_INFERENCE__LEAN_FORWARD", str(lean).lower())
    monkeypatch.setenv("TUNERY_INFERENCE__ISOLATION", "thread")
    monkeypatch.setenv("TUNERY_INFERENCE__DTYPE", "float32")
    engine = build_engine(Settings(data_dir=tmp_path), lambda _name: tiny_model_dir)
    assert isinstance(engine, HFEngine)
    with engine:
        assert (loaded_model(engine).lean is not None) is lean


def test_an_unsupported_architecture_falls_back_to_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path / "tiny-qwen2"  # Qwen2: llama-like, but with biases on q/k/v, which the lean forward lacks
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=2,
        pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        Qwen2ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert unsupported_reason(model) == "model type 'qwen2' is not llama"
    with torch.no_grad():
        want = model.generate(
            input_ids=torch.tensor([PROMPTS[0]]), max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=2
        )[0, len(PROMPTS[0]) :].tolist()
    with HFEngine({"qwen": folder}, dtype="float32") as engine:
        assert engine._runtimes == {}
        chunks = run(engine, dataclasses.replace(request(PROMPTS[0], max_tokens=12), base_model="qwen"))
        assert engine._runtimes["qwen"].loaded.lean is None
    assert token_ids(chunks) == want


def test_an_adapter_on_a_module_it_lacks_falls_back_for_that_pass(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lean = LeanLlama.build(model)
    assert lean is not None
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    on_head = LoraAdapter("head", Path("."), {"lm_head": LoraModule(torch.zeros(hidden, 2), torch.zeros(2, vocab))})
    other = LoraAdapter("x", Path("."), {"model.norm": LoraModule(torch.zeros(hidden, 2), torch.zeros(2, hidden))})
    assert lean.plan([on_head, None]) is not None
    assert lean.plan([on_head, other]) is None  # the scheduler runs this batch through transformers' forward


def test_fusing_the_weights_leaves_the_transformers_forward_unchanged(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([PROMPTS[2]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    fused = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    lean = LeanLlama.build(fused)
    assert lean is not None
    layer = fused.model.layers[0]
    assert layer.self_attn.k_proj.weight.data_ptr() == layer.self_attn.q_proj.weight[-1:].data_ptr() + 4 * 64
    assert LeanLlama.build(fused) is not None  # a second build reuses the fused storage
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, fused(input_ids=ids).logits)


@pytest.mark.parametrize("attention", ["sdpa", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_match_transformers_for_a_prefill_and_decode_steps(
    tiny_model_dir: Path, dtype: torch.dtype, attention: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two left-padded rows: a prefill chunk, then three decode steps, against transformers on each row alone.

    ``native``: the decode steps attend through ``decode_attention``'s compiled kernel.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).eval()
    lean = LeanLlama.build(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype))
    assert lean is not None
    if attention == "native":
        monkeypatch.setattr(decode_attention, "MIN_TOKENS", 1)  # two short rows: below the floor otherwise
        lean.decode_attention = DecodeAttention.load(tmp_path)
        assert lean.decode_attention is not None, "no C compiler to build the kernel with"
    assert lean.packed is (dtype is torch.bfloat16)  # bf16 weights are packed for oneDNN, fp32 ones fused in place
    rows = [PROMPTS[0], PROMPTS[2]]
    width = max(len(r) for r in rows)
    cache = SlotKVCache(lean.num_layers, 2, 32)
    scratch = cache.scratch_column
    ids = torch.zeros(2, width, dtype=torch.long)
    positions = torch.zeros(2, width, dtype=torch.long)
    columns = torch.full((2, width), scratch)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        positions[i, width - len(row) :] = torch.arange(len(row))
        columns[i, width - len(row) :] = torch.arange(len(row))
    limit = torch.where(columns == scratch, 0, columns)
    allowed = torch.arange(width)[None, None, :] <= limit[:, :, None]
    plan = lean.plan([None, None], width)
    assert plan is not None
    tolerance = 1e-4 if dtype is torch.float32 else 0.1
    with torch.inference_mode():
        logits = lean.forward(ids, positions, columns, allowed, cache, 0, plan)
        sequences = [list(r) for r in rows]
        for step in range(4):
            for i, sequence in enumerate(sequences):
                want = model(input_ids=torch.tensor([sequence])).logits[0, -1].float()
                assert torch.allclose(logits[i].float(), want, atol=tolerance, rtol=0), (step, i)
                assert int(logits[i].argmax()) == int(want.argmax())
                sequence.append(int(want.argmax()))
            fed = torch.tensor([[len(s) - 1] for s in sequences])
            allowed = (torch.arange(int(fed.max()) + 1)[None, :] <= fed)[:, None]
            last = torch.tensor([[s[-1]] for s in sequences])
            plan = lean.plan([None, None]) or []
            logits = lean.forward(last, fed, fed, allowed, cache, 0, plan, lengths=fed[:, 0] + 1)


@pytest.fixture(scope="module")
def mlp_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters on the MLP and attention projections, of different ranks (peft, random non-zero B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("mlp-adapters")
    targets = {
        "mlp": (["gate_proj", "up_proj", "down_proj"], 4),
        "all": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 8),
        "qv": (["q_proj", "v_proj"], 2),
        "head": (["o_proj", "lm_head"], 4),
    }
    dirs = {}
    for seed, (name, (modules, rank)) in enumerate(targets.items(), start=11):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        with quiet_peft(), warnings.catch_warnings():  # a LoRA on the tied LM head: peft warns about merging it
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*", category=UserWarning)
            peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, param in peft_model.named_parameters():
                if "lora_" in key:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
        peft_model.save_pretrained(root / name, save_embedding_layers=False)
        dirs[name] = root / name
    return dirs


def test_adapters_on_every_projection_in_one_batch_match_peft(
    counted: tuple[HFEngine, Calls], tiny_model_dir: Path, mlp_adapters: dict[str, Path]
) -> None:
    engine, calls = counted
    reference = Reference(tiny_model_dir, mlp_adapters)
    jobs = [(p, a) for p in PROMPTS[:3] for a in (None, "mlp", "all", "qv", "head")]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*", category=UserWarning)
        expected = [reference.greedy(p, 16, a) for p, a in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, engine, request(p, adapter=a, adapter_dirs=mlp_adapters)) for p, a in jobs]
        for (p, a), future, want in zip(jobs, futures, expected, strict=True):
            assert token_ids(future.result(timeout=120)) == want, (p, a)
    assert calls.transformers == 0
