"""Llama-family models to GGUF for llama.cpp / Ollama: the merged model, and the LoRA adapter alone.

Written with the ``gguf`` package's writer, tensor by tensor (tensor infos first, then each tensor's data as
it is made), following llama.cpp's ``convert_hf_to_gguf.py`` / ``convert_lora_to_gguf.py`` conventions:
tensor names from ``gguf``'s name map (``blk.N.attn_q.weight``), Q and K rows permuted for llama.cpp's rope,
the tokenizer as ``gpt2`` BPE vocabulary and merges with the chat template, and for the adapter
``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and tensors
``<name>.lora_a`` ``[r, in]`` / ``<name>.lora_b`` ``[out, r]``. Only ``LlamaForCausalLM`` (and Mistral,
which llama.cpp reads as llama) is supported; other architectures are refused with a clear message.
Torch-free. It does not quantize (F16 matrices, F32 norms) and never runs llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np

from tunery.catalog.peft_adapter import LoraPair, PeftAdapter
from tunery.catalog.safetensors_stream import SafetensorsReader, TensorInfo, weight_files

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
BF16 = np.dtype("<u2")  # a planned tensor of bfloat16 bits (numpy has no bfloat16)
F32 = np.dtype(np.float32)


class UnsupportedForGguf(ValueError):
    """The model cannot be written as GGUF by Tunery; the message says why."""


def model_config(base_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedForGguf(
            f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} models; this base model is {architecture}. "
            "Export format 'merged' or 'peft' instead and convert with llama.cpp's own scripts."
        )
    return config


def write_merged_gguf(
    adapter: PeftAdapter | None,
    base_dir: Path,
    target: Path,
    *,
    name: str,
    base_id: str,
    matrices: Literal["F16", "BF16"] = "F16",
) -> None:
    """The base model with the adapter merged in (or the base alone: ``adapter`` None), as one GGUF file (F16 or
    BF16 matrices, F32 vectors)."""
    config = model_config(base_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    by_weight = {pair.base_weight: pair for pair in adapter.pairs.values()} if adapter is not None else {}
    readers = [SafetensorsReader(path) for path in weight_files(base_dir)]
    try:
        plan: list[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]] = []
        for reader in readers:
            for info in reader.tensors.values():
                if info.name.endswith("rotary_emb.inv_freq"):
                    continue
                gguf_name = _gguf_name(names, info.name)
                dtype = (BF16 if matrices == "BF16" else np.dtype(np.float16)) if len(info.shape) == 2 else F32
                plan.append((gguf_name, info.shape, dtype, _merged_tensor(reader, info, by_weight, adapter, config)))
        writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _add_model_metadata(writer, config, name=name, base_id=base_id)
        _add_tokenizer(writer, base_dir, config, base_id)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if matrices == "BF16" else gguf.LlamaFileType.MOSTLY_F16)
        _write_streamed(writer, target, plan)
    finally:
        for reader in readers:
            reader.close()


def write_adapter_gguf(adapter: PeftAdapter, base_dir: Path, target: Path, *, name: str, base_id: str) -> None:
    """The adapter alone as a llama.cpp LoRA GGUF (``llama-cli -m base.gguf --lora this.gguf``), F32."""
    config = model_config(base_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    alpha = float(adapter.config.get("lora_alpha", adapter.config.get("r", 8)))
    plan: list[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]] = []
    for pair in adapter.pairs.values():
        gguf_name = _gguf_name(names, pair.base_weight)
        a_shape = adapter.reader.tensors[pair.a_key].shape
        b_shape = adapter.reader.tensors[pair.b_key].shape
        f32 = np.dtype(np.float32)
        plan.append((f"{gguf_name}.lora_a", a_shape, f32, lambda pair=pair: adapter.a(pair)))
        plan.append((f"{gguf_name}.lora_b", b_shape, f32, _lora_b(adapter, pair, alpha, config)))
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base_id)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _write_streamed(writer, target, plan)


def _write_streamed(
    writer: gguf.GGUFWriter, target: Path, plan: list[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]]
) -> None:
    for gguf_name, shape, dtype, _ in plan:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = gguf.GGMLQuantizationType.BF16 if dtype == BF16 else None
        writer.add_tensor_info(gguf_name, shape, dtype, nbytes, raw_dtype=raw)
    writer.write_header_to_file(target)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for gguf_name, shape, dtype, make in plan:
        if dtype == BF16:  # bfloat16 bits (round to nearest even), as gguf's own converter makes them
            values = np.ascontiguousarray(make(), dtype=np.float32)
            tensor = gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16).view(BF16).reshape(values.shape)
        else:
            tensor = np.ascontiguousarray(make(), dtype=dtype)
        if tensor.shape != shape:
            raise ValueError(f"{gguf_name}: made {tensor.shape}, planned {shape}")
        writer.write_tensor_data(tensor)
    writer.close()


def _gguf_name(names: gguf.TensorNameMap, hf_name: str) -> str:
    found = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise UnsupportedForGguf(f"The weight '{hf_name}' has no llama.cpp name; GGUF export cannot place it.")
    return found


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's rope takes Q/K rows interleaved per head, where HF keeps halves (as convert_hf_to_gguf)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _rope_permutation(hf_name: str, config: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    heads = int(config["num_attention_heads"])
    if hf_name.endswith("q_proj.weight"):
        return lambda w: _permute(w, heads, heads)
    if hf_name.endswith("k_proj.weight"):
        kv_heads = int(config.get("num_key_value_heads") or heads)
        return lambda w: _permute(w, heads, kv_heads)
    return lambda w: w


def _merged_tensor(
    reader: SafetensorsReader,
    info: TensorInfo,
    by_weight: dict[str, LoraPair],
    adapter: PeftAdapter | None,
    config: dict[str, Any],
) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        values = reader.array(info.name)
        pair = by_weight.get(info.name)
        if pair is not None and adapter is not None:
            values = values + adapter.delta(pair)
        return _rope_permutation(info.name, config)(values)

    return make


def _lora_b(adapter: PeftAdapter, pair: LoraPair, alpha: float, config: dict[str, Any]) -> Callable[[], np.ndarray]:
    """B with any per-module alpha or rsLoRA scale folded in, since llama.cpp applies one ``alpha / r``."""

    def make() -> np.ndarray:
        factor = pair.scale * pair.rank / alpha
        b = adapter.b(pair) * np.float32(factor) if factor != 1.0 else adapter.b(pair)
        return _rope_permutation(pair.base_weight, config)(b)

    return make


def _add_model_metadata(writer: gguf.GGUFWriter, config: dict[str, Any], *, name: str, base_id: str) -> None:
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base_id)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)))  # fmt: skip
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))


def _add_tokenizer(writer: gguf.GGUFWriter, base_dir: Path, config: dict[str, Any], base_id: str) -> None:
    """A byte-level BPE tokenizer (``tokenizer.json``) as llama.cpp's ``gpt2`` vocabulary."""
    tokenizer = json.loads((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedForGguf(f"GGUF export supports BPE tokenizers; this one is {model.get('type')}.")
    size = int(config["vocab_size"])
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, index in model["vocab"].items():
        if index < size:
            tokens[index], types[index] = text, gguf.TokenType.NORMAL
    for added in tokenizer.get("added_tokens") or []:
        if added["id"] < size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    # llama.cpp picks its pre-tokenizer regex by this name; SmolLM models have their own.
    writer.add_tokenizer_pre("smollm" if base_id.startswith("HuggingFaceTB/SmolLM") else "default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    special = _special_tokens(base_dir, config, {text: i for i, text in enumerate(tokens)})
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):  # fmt: skip
        if special.get(key) is not None:
            add(int(special[key]))
    writer.add_add_bos_token(False)
    template = _chat_template(base_dir)
    if template:
        writer.add_chat_template(template)


def _special_tokens(base_dir: Path, config: dict[str, Any], ids: dict[str, int]) -> dict[str, int | None]:
    path = base_dir / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    found: dict[str, int | None] = {}
    for key in ("bos", "eos", "unk", "pad"):
        value = settings.get(f"{key}_token")
        text = value.get("content") if isinstance(value, dict) else value
        configured = config.get(f"{key}_token_id")
        found[key] = ids.get(text) if isinstance(text, str) else (configured if isinstance(configured, int) else None)
    return found


def _chat_template(base_dir: Path) -> str | None:
    jinja = base_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    path = base_dir / "tokenizer_config.json"
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template") if path.is_file() else None
    return template if isinstance(template, str) else None
