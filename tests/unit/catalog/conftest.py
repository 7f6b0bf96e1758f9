"""Fixtures for the catalog tests: the tiny model's and SmolLM2's tokenizers, in both implementations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunery.catalog import BUNDLED_MODELS, ChatTokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer prepared from the bundled GGUF (tokenizer only: ~6 s, no weights)."""
    from tunery.catalog.materialize import prepare

    return prepare(BUNDLED_MODELS[0], tmp_path_factory.mktemp("model-cache"), "tokenizer")


@pytest.fixture(scope="session", params=["tiny", "smollm2"])
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    """Each tokenizer folder in turn: the tiny model's, then SmolLM2's."""
    name = "tiny_model_dir" if request.param == "tiny" else "smollm2_tokenizer_dir"
    return Path(request.getfixturevalue(name))


@pytest.fixture(scope="session")
def chat_tokenizer(tokenizer_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_dir(tokenizer_dir, context_length=8192)


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_dir: Path) -> Any:
    """The same folder loaded by transformers: the reference ChatTokenizer must agree with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_chat_tokenizer(tiny_model_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_dir(tiny_model_dir)
