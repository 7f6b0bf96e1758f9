"""Fixtures shared by every test tier. Keep each one small and documented; tier-specific ones live lower down."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a 512-token ChatML tokenizer, saved with ``save_pretrained`` (~0.1 s)."""
    from tunery.testing.tiny_model import build_tiny_model  # imports torch: only when a test asks for it

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto in server mode) as a separate process on loopback, for the session.

    Skips the test when moto's server extra (moto, flask, flask-cors) is not installed.
    """
    for module in ("moto", "flask", "flask_cors"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'moto[server]' to run the S3 tests")
    from tunery.testing.s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3-server")) as endpoint:
        yield endpoint
