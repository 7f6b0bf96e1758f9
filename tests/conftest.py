"""Fixtures shared by every test tier. Keep each one small and documented; tier-specific ones live lower down."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a 512-token ChatML tokenizer, saved with ``save_pretrained`` (~0.1 s)."""
    from tunery.testing.tiny_model import build_tiny_model  # imports torch: only when a test asks for it

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
