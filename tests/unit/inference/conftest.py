"""Fixtures for the inference tests: LoRA adapters for the tiny model, an fp32 engine, and reference outputs.

The references are what a user gets from transformers itself: ``model.generate(do_sample=False)`` on the
base model, or on the base model wrapped by peft with one adapter loaded. Engine outputs must equal them
token for token (float32 weights, so batching and padding cannot change a greedy choice).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from tunery.inference.engine import GenerationChunk, GenerationRequest, SamplingParams
from tunery.inference.hf_engine import HFEngine

TINY = "tiny"
ADAPTERS = ("alpha", "beta", "gamma")
EOS_ID = 2  # the tiny tokenizer's <|im_end|>, which the engine always stops at


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 calls ``is_gradient_checkpointing``, which transformers 5.24 deprecates with a FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def make_adapter(base_dir: Path, out_dir: Path, seed: int, *, r: int = 8) -> Path:
    """A peft LoRA (r=8, alpha=16, q/k/v/o) with random A and B, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with quiet_peft():
        peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:  # lora_B starts at zero: the adapter would do nothing
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model_dir, root / name, seed) for seed, name in enumerate(ADAPTERS, start=1)}


# Every engine test runs on both forward passes: the lean one (llama models) and transformers' own.
FORWARDS = pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformers"])


@pytest.fixture(scope="module", params=[True, False], ids=["lean", "transformers"])
def lean_forward(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, lean_forward: bool) -> Iterator[HFEngine]:
    with HFEngine(
        {TINY: tiny_model_dir},
        dtype="float32",
        max_loaded_adapters=4,
        max_batch_size=16,
        lean_forward=lean_forward,
    ) as engine:
        yield engine


def request(
    prompt: Sequence[int],
    *,
    adapter: str | None = None,
    adapter_dirs: dict[str, Path] | None = None,
    **params: object,
) -> GenerationRequest:
    """A request for the tiny model; ``params`` are ``SamplingParams`` fields (greedy, 16 tokens by default)."""
    sampling = SamplingParams(**{"max_tokens": 16, "temperature": 0.0, **params})  # type: ignore[arg-type]
    adapter_dir = str(adapter_dirs[adapter]) if adapter is not None and adapter_dirs is not None else None
    return GenerationRequest(
        base_model=TINY,
        prompt_ids=list(prompt),
        params=sampling,
        adapter_dir=adapter_dir,
        adapter_name=adapter,
    )


def run(engine: HFEngine, req: GenerationRequest) -> list[GenerationChunk]:
    return list(engine.generate(req))


def token_ids(chunks: Sequence[GenerationChunk]) -> list[int]:
    return [i for chunk in chunks for i in chunk.token_ids]


def text(chunks: Sequence[GenerationChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


class Reference:
    """Greedy continuations from ``transformers`` + ``peft`` directly, one request at a time."""

    def __init__(self, base_dir: Path, adapter_dirs: dict[str, Path]) -> None:
        from transformers import AutoModelForCausalLM

        self._base_dir = base_dir
        self._adapter_dirs = adapter_dirs
        self._models: dict[str | None, torch.nn.Module] = {
            None: AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        }

    def _model(self, adapter: str | None) -> torch.nn.Module:
        if adapter not in self._models:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self._base_dir, dtype=torch.float32)
            with quiet_peft():
                self._models[adapter] = PeftModel.from_pretrained(base, self._adapter_dirs[str(adapter)]).eval()
        return self._models[adapter]

    def greedy(self, prompt: Sequence[int], max_tokens: int, adapter: str | None = None) -> list[int]:
        model = self._model(adapter)
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                input_ids=torch.tensor([list(prompt)]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=EOS_ID,
                pad_token_id=EOS_ID,
            )
        return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path, adapter_dirs: dict[str, Path]) -> Reference:
    return Reference(tiny_model_dir, adapter_dirs)
