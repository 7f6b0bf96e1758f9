"""Adapters for serving: reading peft folders (and refusing what cannot be served), the LRU of loaded
adapters with pins (bounded by a count or by bytes), and the per-row LoRA arithmetic of ``MultiLora`` checked
against plain matrix maths.

Run: ``.venv/bin/pytest tests/unit/inference/test_adapters.py -q``
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

from tunery.inference.adapters import AdapterCache, LoraAdapter, LoraModule, load_lora_adapter, lora_adapter_nbytes
from tunery.inference.errors import AdapterLoadError, AdapterLoadTimeout, AdapterTooLarge
from tunery.inference.multi_lora import MultiLora

SHAPES = {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.0.self_attn.k_proj": (64, 32)}


def write_adapter(path: Path, config: dict[str, object] | None = None, r: int = 4) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    base = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "bias": "none", "target_modules": ["q_proj", "k_proj"]}
    (path / "adapter_config.json").write_text(json.dumps({**base, **(config or {})}))
    weights = {}
    for module, (fan_in, fan_out) in SHAPES.items():
        weights[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, fan_in)
        weights[f"base_model.model.{module}.lora_B.weight"] = torch.randn(fan_out, r)
    save_file(weights, path / "adapter_model.safetensors")
    return path


def load(path: Path) -> LoraAdapter:
    return load_lora_adapter(path, name="x", linear_shapes=SHAPES, dtype=torch.float32, device=torch.device("cpu"))


# ------------------------------------------------------------------------------------------------- loading
def test_a_peft_folder_becomes_transposed_matrices_with_the_scale_in_b(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = write_adapter(tmp_path / "a", {"alpha_pattern": {"k_proj": 2}})
    raw = load_file(path / "adapter_model.safetensors")
    adapter = load(path)
    q = adapter.modules["model.layers.0.self_attn.q_proj"]
    assert q.a.shape == (64, 4)
    assert q.b.shape == (4, 64)
    assert q.rank == 4
    assert torch.equal(q.a, raw["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].t())
    assert torch.allclose(q.b, raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].t() * 8 / 4)
    k = adapter.modules["model.layers.0.self_attn.k_proj"]
    assert torch.allclose(k.b, raw["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].t() * 2 / 4)


def test_rslora_scales_by_the_square_root_of_the_rank(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = write_adapter(tmp_path / "a", {"use_rslora": True})
    raw = load_file(path / "adapter_model.safetensors")[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    ]
    assert torch.allclose(load(path).modules["model.layers.0.self_attn.q_proj"].b, raw.t() * 8 / math.sqrt(4))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"use_dora": True}, "'use_dora' is set"),
        ({"modules_to_save": ["lm_head"]}, "'modules_to_save' is set"),
        ({"bias": "all"}, "trains biases"),
        ({"peft_type": "IA3"}, "IA3 adapter"),
    ],
)
def test_adapters_that_are_not_plain_lora_are_refused(tmp_path: Path, config: dict[str, object], message: str) -> None:
    with pytest.raises(AdapterLoadError, match=message):
        load(write_adapter(tmp_path / "a", config))


def test_broken_folders_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match=r"Adapter 'x' \(.*\): no adapter_config.json"):
        load(tmp_path / "missing")
    path = write_adapter(tmp_path / "corrupt")
    (path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterLoadError, match=r"cannot read adapter_model\.safetensors"):
        load(path)
    path = write_adapter(tmp_path / "other-model")
    with pytest.raises(AdapterLoadError, match="not a linear layer of the base model"):
        load_lora_adapter(
            path,
            name="x",
            linear_shapes={"model.layers.0.self_attn.q_proj": (64, 64)},
            dtype=torch.float32,
            device=torch.device("cpu"),
        )


# ----------------------------------------------------------------------------------------------------- LRU
class CountingLoader:
    def __init__(self, delay: float = 0.0) -> None:
        self.loads: list[str] = []
        self.delay = delay

    def __call__(self, name: str, path: Path) -> LoraAdapter:
        self.loads.append(name)
        time.sleep(self.delay)
        if name == "bad":
            raise AdapterLoadError("bad adapter")
        return LoraAdapter(name=name, path=path, modules={})


def test_the_least_recently_used_idle_adapter_is_evicted(tmp_path: Path) -> None:
    loader = CountingLoader()
    cache = AdapterCache(loader, capacity=2)
    a = cache.acquire("a", tmp_path)
    cache.release(a)
    cache.release(cache.acquire("b", tmp_path))
    cache.release(cache.acquire("a", tmp_path))  # a is now the most recently used
    cache.release(cache.acquire("c", tmp_path))
    assert cache.loaded() == ["a", "c"]
    assert loader.loads == ["a", "b", "c"]


def test_pinned_adapters_stay_and_newcomers_wait_for_a_free_slot(tmp_path: Path) -> None:
    cache = AdapterCache(CountingLoader(), capacity=1)
    a = cache.acquire("a", tmp_path)
    got: list[LoraAdapter] = []
    waiter = threading.Thread(target=lambda: got.append(cache.acquire("b", tmp_path)))
    waiter.start()
    time.sleep(0.1)
    assert not got
    assert cache.loaded() == ["a"]
    cache.release(a)
    waiter.join(5)
    assert [x.name for x in got] == ["b"]
    assert cache.loaded() == ["b"]


def test_concurrent_requests_share_one_load_and_failures_are_not_cached(tmp_path: Path) -> None:
    loader = CountingLoader(delay=0.05)
    cache = AdapterCache(loader, capacity=2)
    results: list[LoraAdapter] = []
    threads = [threading.Thread(target=lambda: results.append(cache.acquire("a", tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert loader.loads == ["a"]
    assert len({id(x) for x in results}) == 1
    for _ in range(2):
        with pytest.raises(AdapterLoadError):
            cache.acquire("bad", tmp_path)
    assert loader.loads == ["a", "bad", "bad"]
    assert cache.loaded() == ["a"]


class GatedLoader:
    """Loads instantly, except the adapters named in ``gated``, which wait for ``gate``; counts loads at once."""

    def __init__(self, gated: tuple[str, ...] = ()) -> None:
        self.gate = threading.Event()
        self.gated = gated
        self.loads: list[str] = []
        self.loading = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, name: str, path: Path) -> LoraAdapter:
        with self._lock:
            self.loads.append(name)
            self.loading += 1
            self.most_at_once = max(self.most_at_once, self.loading)
        try:
            if name in self.gated:
                assert self.gate.wait(30)
            return LoraAdapter(name=name, path=path, modules={})
        finally:
            with self._lock:
                self.loading -= 1


def test_a_request_whose_adapter_finds_no_free_slot_in_time_gets_a_clear_error(tmp_path: Path) -> None:
    cache = AdapterCache(GatedLoader(), capacity=2, timeout_s=0.2)
    held = [cache.acquire("a", tmp_path), cache.acquire("b", tmp_path)]
    with pytest.raises(AdapterLoadTimeout) as late:
        cache.acquire("c", tmp_path)
    assert late.value.message.startswith("Adapter 'c' could not be loaded within 0.2 s: all 2 adapter slots are")
    assert late.value.code == "adapterLoadTimeout"
    assert late.value.param == "model"
    assert cache.loaded() == ["a", "b"]
    cache.release(held[0])
    cache.release(cache.acquire("c", tmp_path, timeout_s=5))  # a slot came free: no wait
    assert cache.loaded() == ["b", "c"]


def test_a_slow_load_times_out_its_waiters_but_completes_and_never_stalls_other_adapters(tmp_path: Path) -> None:
    loader = GatedLoader(gated=("slow",))
    cache = AdapterCache(loader, capacity=2, timeout_s=0.2)
    cache.release(cache.acquire("fast", tmp_path))
    with pytest.raises(AdapterLoadTimeout, match=r"'slow' is still loading after 0\.2 s"):
        cache.acquire("slow", tmp_path)
    # While it loads (in its own thread), a loaded adapter is handed out at once.
    cache.release(cache.acquire("fast", tmp_path, timeout_s=5))
    loader.gate.set()
    slow = cache.acquire("slow", tmp_path, timeout_s=30)  # the same load, finished: not loaded again
    assert slow.name == "slow"
    assert loader.loads == ["fast", "slow"]


def test_twenty_adapters_wanted_at_once_share_eight_slots_without_deadlock(tmp_path: Path) -> None:
    loader = GatedLoader()
    cache = AdapterCache(loader, capacity=8, timeout_s=60)
    in_use: set[str] = set()
    most_in_use = 0
    lock = threading.Lock()

    def use(name: str) -> str:
        nonlocal most_in_use
        adapter = cache.acquire(name, tmp_path)
        with lock:
            in_use.add(name)
            most_in_use = max(most_in_use, len(in_use))
        time.sleep(0.01)  # a request holding its adapter for a moment
        with lock:
            in_use.discard(name)
        cache.release(adapter)
        return adapter.name

    names = [f"adapter-{i}" for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        assert list(pool.map(use, names)) == names
    assert most_in_use <= 8
    assert len(cache.loaded()) <= 8
    assert sorted(loader.loads) == sorted(names)


# ------------------------------------------------------------------------------------------- memory budget
class SizedLoader:
    """Adapters of ``sizes[name]`` bytes of tensors (float32), loaded at once; ``size`` tells them in advance."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.loads: list[str] = []

    def __call__(self, name: str, path: Path) -> LoraAdapter:
        self.loads.append(name)
        module = LoraModule(a=torch.zeros(self.sizes[name] // 4, 1), b=torch.zeros(0, 1))
        return LoraAdapter(name=name, path=path, modules={"m": module})

    def size(self, name: str, path: Path) -> int:
        return self.sizes[name]


def test_eviction_goes_by_bytes_least_recently_used_first(tmp_path: Path) -> None:
    loader = SizedLoader({"a": 400, "b": 400, "c": 300, "d": 600, "e": 1000, "small": 100})
    cache = AdapterCache(loader, budget_bytes=1000, size=loader.size)
    for name in ("a", "b", "small"):
        cache.release(cache.acquire(name, tmp_path))
    assert cache.loaded() == ["a", "b", "small"]  # 900 bytes: all fit
    cache.release(cache.acquire("c", tmp_path))  # 300 more: the least recently used (a) leaves, 100 bytes would not do
    assert cache.loaded() == ["b", "small", "c"]
    cache.release(cache.acquire("b", tmp_path))  # b is now the most recently used
    cache.release(cache.acquire("d", tmp_path))  # 600: small and c leave (LRU), b stays
    assert cache.loaded() == ["b", "d"]
    assert cache.memory() == {"loaded": 2, "loaded_bytes": 1000, "budget_bytes": 1000}
    cache.release(cache.acquire("e", tmp_path))  # the whole budget: everything idle leaves
    assert cache.loaded() == ["e"]
    assert loader.loads == ["a", "b", "small", "c", "d", "e"]


def test_an_adapter_larger_than_the_whole_budget_is_refused_at_once(tmp_path: Path) -> None:
    loader = SizedLoader({"a": 2**20, "huge": 3 * 2**20})
    cache = AdapterCache(loader, budget_bytes=2 * 2**20, size=loader.size, timeout_s=60)
    cache.release(cache.acquire("a", tmp_path))
    began = time.monotonic()
    with pytest.raises(AdapterTooLarge) as refused:
        cache.acquire("huge", tmp_path)
    assert time.monotonic() - began < 30  # no wait for the timeout
    assert refused.value.message.startswith(
        "Adapter 'huge' takes 3.0 MiB in memory, more than the whole adapter memory budget of 2.0 MiB"
    )
    assert "TUNERY_INFERENCE__ADAPTER_CACHE_MB" in refused.value.message
    assert (refused.value.code, refused.value.param) == ("adapterTooLarge", "model")
    assert loader.loads == ["a"]  # never loaded, and nothing was evicted for it
    assert cache.loaded() == ["a"]


def test_an_adapter_larger_than_its_header_said_is_refused_after_loading(tmp_path: Path) -> None:
    loader = SizedLoader({"liar": 3000})
    cache = AdapterCache(loader, budget_bytes=2000, size=lambda name, path: 100)
    with pytest.raises(AdapterTooLarge):
        cache.acquire("liar", tmp_path)
    assert cache.loaded() == []
    assert cache.memory()["loaded_bytes"] == 0


def test_adapters_in_use_are_never_evicted_and_a_newcomer_waits_for_room(tmp_path: Path) -> None:
    loader = SizedLoader({"a": 600, "b": 300, "c": 600})
    cache = AdapterCache(loader, budget_bytes=1000, size=loader.size, timeout_s=0.2)
    a = cache.acquire("a", tmp_path)  # pinned: a running stream uses it
    cache.release(cache.acquire("b", tmp_path))
    with pytest.raises(AdapterLoadTimeout) as late:
        cache.acquire("c", tmp_path)
    assert late.value.message.startswith(
        "Adapter 'c' could not be loaded within 0.2 s: it needs 0.6 KiB and adapters in "
        "use by running requests hold 0.6 KiB of the 1.0 KiB adapter memory budget; try again shortly"
    )
    assert cache.loaded() == ["a", "b"]  # b was not evicted for nothing: c would not have fit anyway
    got: list[LoraAdapter] = []
    waiter = threading.Thread(target=lambda: got.append(cache.acquire("c", tmp_path, timeout_s=30)))
    waiter.start()
    cache.release(a)  # the stream ends: a (least recently used) leaves, which makes room for c
    waiter.join(30)
    assert [x.name for x in got] == ["c"]
    assert cache.loaded() == ["b", "c"]


def test_adapters_of_unknown_size_are_counted_once_loaded(tmp_path: Path) -> None:
    loader = SizedLoader({"a": 600, "b": 600})
    cache = AdapterCache(loader, budget_bytes=1000)  # no size function
    cache.release(cache.acquire("a", tmp_path))
    cache.release(cache.acquire("b", tmp_path))  # loaded as size 0, then a leaves to keep within the budget
    assert cache.loaded() == ["b"]
    assert cache.memory()["loaded_bytes"] == 600


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_size_read_from_the_header_is_the_size_once_loaded(tmp_path: Path, dtype: torch.dtype) -> None:
    path = write_adapter(tmp_path / "a", r=6)
    loaded = load_lora_adapter(path, name="x", linear_shapes=SHAPES, dtype=dtype, device=torch.device("cpu"))
    assert lora_adapter_nbytes(path, dtype) == loaded.nbytes == 6 * (64 + 64 + 64 + 32) * dtype.itemsize
    assert lora_adapter_nbytes(tmp_path / "missing", dtype) is None


# ------------------------------------------------------------------------------------------------ MultiLora
def test_each_row_gets_its_own_adapters_delta_in_one_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 8))
    lora = MultiLora(model)

    def adapter(name: str, rank: int, modules: tuple[str, ...]) -> LoraAdapter:
        weights = {
            m: LoraModule(a=torch.randn(lora.linear_shapes[m][0], rank), b=torch.randn(rank, lora.linear_shapes[m][1]))
            for m in modules
        }
        return LoraAdapter(name=name, path=Path(name), modules=weights)

    first, second = adapter("first", 2, ("0", "1")), adapter("second", 3, ("0",))
    rows = [first, None, second, first, second]
    x = torch.randn(len(rows), 2, 16)  # two positions per row, as in a prefill

    def expected() -> torch.Tensor:
        outputs = []
        for row, adapter_ in enumerate(rows):
            h = x[row]
            for name, layer in model.named_children():
                delta = (
                    0
                    if adapter_ is None or name not in adapter_.modules
                    else h @ adapter_.modules[name].a @ adapter_.modules[name].b
                )
                h = layer(h) + delta
            outputs.append(h)
        return torch.stack(outputs)

    with torch.no_grad():
        plain = model(x)
        with lora.applied(lora.plan(rows)):
            mixed = model(x)
        assert torch.allclose(mixed, expected(), atol=1e-5)
        with lora.applied(lora.plan(rows, grouped=True)):  # the prefill flavour: one product per adapter
            grouped = model(x)
        assert torch.allclose(grouped, expected(), atol=1e-5)
        assert torch.equal(model(x), plain)  # outside ``applied`` the hooks add nothing
        with lora.applied(lora.plan([first] * 5)):
            only_first = model(x)
        rows[:] = [first] * 5
        assert torch.allclose(only_first, expected(), atol=1e-5)
