"""The native decode-attention kernel (``decode_attention``): it answers what torch's attention answers over the
slot cache's views, it is built once per machine and reused, and where it cannot be built or disagrees with
torch the engine keeps torch's attention and still answers.

Run: ``.venv/bin/pytest tests/unit/inference/test_decode_attention.py -q``
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.unit.inference.conftest import TINY, Reference, request, run, token_ids
from tunery.inference import decode_attention
from tunery.inference.decode_attention import DecodeAttention
from tunery.inference.hf_engine import HFEngine
from tunery.inference.kv_cache import SlotKVCache


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> DecodeAttention:
    built = DecodeAttention.load(tmp_path_factory.mktemp("kernels"))
    assert built is not None, "no C compiler to build the kernel with"
    return built


def torch_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """SDPA in float32 with each row cut to its length (what the engine computed before the kernel)."""
    allowed = torch.arange(keys.shape[2])[None, :] < lengths[:, None]
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))[:, None, None, :]
    return F.scaled_dot_product_attention(query.float(), keys.float(), values.float(), attn_mask=mask)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_it_matches_torch_on_the_slot_cache_views(
    kernel: DecodeAttention, dtype: torch.dtype, tolerance: float, threads: int
) -> None:
    """Rows of different lengths (one of a single token) in slots of a wider cache, 4 query heads per KV head."""
    layers, slots, kv, group, dim = 2, 5, 2, 4, 64
    cache = SlotKVCache(layers, slots, 96)
    generator = torch.Generator().manual_seed(1)
    cache.allocate(torch.empty(1, kv, 1, dim, dtype=dtype))
    assert cache.keys_buffer is not None
    assert cache.values_buffer is not None
    cache.keys_buffer.copy_(torch.randn(cache.keys_buffer.shape, generator=generator))
    cache.values_buffer.copy_(torch.randn(cache.values_buffer.shape, generator=generator))
    lengths = torch.tensor([90, 1, 37, 64])
    rows, longest = len(lengths), int(lengths.max())
    query = (torch.randn(rows, kv, group, dim, generator=generator) * 3).to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step = kernel.step(lengths, group)
        for layer in range(layers):  # rows in slots 1..4, as a decode step with first_slot 1 reads them
            keys = cache.keys_buffer[layer, 1 : 1 + rows, :, :longest]
            values = cache.values_buffer[layer, 1 : 1 + rows, :, :longest]
            got = step(query, keys, values)
            want = torch_attention(query, keys, values, lengths)
            assert got.dtype == dtype
            assert got.shape == query.shape
            assert torch.allclose(got.float(), want, atol=tolerance, rtol=0), float((got.float() - want).abs().max())
    finally:
        torch.set_num_threads(previous)


def test_small_steps_stay_on_torch_attention(kernel: DecodeAttention) -> None:
    """Below ``MIN_TOKENS`` cached tokens read per KV head a step is left to SDPA (the call costs more there)."""
    keys = torch.zeros(4, 3, 300, 64)[:, :, :256]
    assert kernel.supports(torch.float32, torch.device("cpu"), 3, 64, keys)  # 4 rows x 256 = 1,024
    assert not kernel.supports(torch.float32, torch.device("cpu"), 3, 64, keys[:1])  # 1 row x 256
    assert not kernel.supports(torch.float16, torch.device("cpu"), 3, 64, keys.half())  # no fp16 variant
    assert not kernel.supports(torch.float32, torch.device("cpu"), 17, 64, keys)  # more query heads than it holds


def test_it_is_built_once_and_reused(tmp_path: Path) -> None:
    first = DecodeAttention.load(tmp_path)
    assert first is not None
    built = first.path.stat().st_mtime_ns
    second = DecodeAttention.load(tmp_path)
    assert second is not None
    assert second.path == first.path
    assert second.path.stat().st_mtime_ns == built
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no build folders left behind


def test_without_a_compiler_it_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert DecodeAttention.load(tmp_path / "kernels") is None


def test_a_kernel_that_disagrees_with_torch_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source whose scores are scaled wrongly compiles, fails the check at load, and is refused."""
    wrong = decode_attention._SOURCE.replace("* scale;", "* scale * 1.5f;")
    assert wrong != decode_attention._SOURCE
    monkeypatch.setattr(decode_attention, "_SOURCE", wrong)
    assert DecodeAttention.load(tmp_path) is None


@pytest.mark.parametrize("native", [True, False])
def test_the_engine_answers_greedily_with_and_without_the_kernel(
    tiny_model_dir: Path, reference: Reference, native: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The kernel is used by decode steps when built; without it (turned off, or no compiler) answers are the same."""
    if not native:
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(decode_attention, "MIN_TOKENS", 1)  # the tiny prompts read fewer tokens than the floor
    calls = 0
    original = DecodeAttention.step

    def counted(self: DecodeAttention, lengths: torch.Tensor, group: int) -> decode_attention.DecodeStep:
        nonlocal calls
        calls += 1
        return original(self, lengths, group)

    monkeypatch.setattr(DecodeAttention, "step", counted)
    prompt = [5, 17, 99, 230, 41, 77]
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", kernel_cache=tmp_path / "kernels") as engine:
        assert token_ids(run(engine, request(prompt))) == reference.greedy(prompt, 16)
        lean = engine._runtimes[TINY].loaded.lean
        assert lean is not None
        assert (lean.decode_attention is not None) is native
    assert (calls >= 15) is native  # every decode step after the prefill's first token


@pytest.mark.parametrize("native", [True, False])
def test_the_server_setting_turns_the_kernel_on_and_off(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """``TUNERY_INFERENCE__NATIVE_ATTENTION`` reaches the engine; the kernel is built in the data folder's cache."""
    from tunery.bootstrap import build_engine
    from tunery.config import Settings

    monkeypatch.setenv("TUNERY_INFERENCE__NATIVE_ATTENTION", str(native).lower())
    monkeypatch.setenv("TUNERY_INFERENCE__ISOLATION", "thread")
    monkeypatch.setenv("TUNERY_INFERENCE__DTYPE", "float32")
    engine = build_engine(Settings(data_dir=tmp_path), lambda _name: tiny_model_dir)
    assert isinstance(engine, HFEngine)
    with engine:
        run(engine, request([5, 6, 7], max_tokens=2))
        lean = engine._runtimes[TINY].loaded.lean
        assert lean is not None
        assert (lean.decode_attention is not None) is native
    built = list((tmp_path / "cache" / "kernels").glob("decode_attention-*.so"))
    assert len(built) == (1 if native else 0)
