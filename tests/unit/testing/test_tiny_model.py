"""The tiny model builder: transformers loads what it writes, it generates, and a seed fixes its files.

Run: .venv/bin/pytest tests/unit/testing -q
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.catalog import ChatTokenizer
from tunery.testing.tiny_model import TINY_CONTEXT_LENGTH, TINY_VOCAB_SIZE, build_tiny_model


def test_transformers_loads_the_tiny_model_and_it_generates(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (2, 64, 512)
    assert sum(p.numel() for p in model.parameters()) < 200_000

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        output = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_tiny_tokenizer_looks_like_smollm2s(tiny_model_dir: Path) -> None:
    tokenizer = ChatTokenizer.from_dir(tiny_model_dir)
    assert tokenizer.vocab_size == TINY_VOCAB_SIZE
    assert tokenizer.context_length == TINY_CONTEXT_LENGTH
    assert [tokenizer.encode(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [[0], [1], [2]]
    # Trained on English text: common words are single tokens, not bytes.
    assert len(tokenizer.encode(" the capital of France")) < len(" the capital of France") // 2


def test_same_seed_same_files_and_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    expected_next = torch.rand(1)
    torch.manual_seed(1234)
    first = build_tiny_model(tmp_path / "a", seed=7)
    assert torch.equal(torch.rand(1), expected_next)

    second = build_tiny_model(tmp_path / "b", seed=7)
    other = build_tiny_model(tmp_path / "c", seed=8)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
