"""A lean forward pass for llama-architecture models over the engine's slot KV cache, with batched multi-LoRA.

Why by hand: on a small CPU model the time of a decode step is not the arithmetic but the per-operator
overhead of the generic ``transformers`` forward (thousands of aten calls per step: dispatch, masks, cache
objects, hooks, views) — SmolLM2-135M takes ~110 ms per step at batch 1 against a ~20 ms memory-bandwidth bound,
and ``torch.compile(dynamic=True)`` does not finish compiling on a 2-core machine in minutes. This module runs
the same mathematics with a few operators per layer:

* weights are fused once at load: q, k and v become one ``[q+k+v, hidden]`` matrix and gate and up one
  ``[2·mlp, hidden]`` matrix. In bf16 (``PACKED_DTYPES``) they are then packed into oneDNN's blocked layout —
  a one-row product on a plain matrix ran ~2x slower here, oneDNN re-laying the weight out on every call —
  and the model's plain projection weights are released (no memory doubled; the ``transformers`` forward of
  that model can then not run, so everything goes through this one). In fp32 the model's own ``nn.Linear``
  weights are re-pointed at slices of the fused matrices instead, and the ``transformers`` forward still works;
* the hidden state stays ``[tokens, hidden]`` so each projection is one product (o and down add the residual
  in the same call); RMSNorm (one ``vector_norm``), rotary (tables built once, ``rotate_half`` as a ``flip``)
  and SwiGLU are a handful of element-wise operators;
* attention is ``scaled_dot_product_attention`` reading the ``SlotKVCache`` buffers through views, grouped-query
  heads folded into the query length so keys and values are never repeated; new keys and values are written
  with one ``index_copy_`` each into the flat buffers;
* LoRA deltas of all rows are one product per projection group: ``h = x · [A_1 | … | A_n]`` for the adapters
  of the batch, ``h *= M`` (each row keeps its own adapter's columns), ``out[:, cols] += h[:, rank] · B`` per
  projection (``multi_lora`` explains why this beats a per-row gather on a CPU). A prefill with several
  adapters uses one product per adapter over its own tokens instead (``grouped``);
* the LM head (and its LoRA, if an adapter has one) runs only on the last position of each row.

A SmolLM2-135M decode step at batch 1 runs ~3,200 aten operators here against 6,600-7,400 through
``transformers``, in half the time (16 against 32 ms in bf16; ``bench/decode_step.py``, ``bench/RESULTS.md``).
``LeanLlama.build`` returns None for a model it does not support (another architecture, biases, a rope type
whose frequencies change with the length, ...), and ``plan`` returns None for adapters it cannot apply (a LoRA
on a module that is not one of the seven projections or the LM head, which the adapter loader does not accept
anyway): the scheduler then uses the ``transformers`` forward for that pass. Both paths read and write the
same cache layout. It does not choose rows (``batching``) or load adapters (``adapters``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunery.inference.adapters import LoraAdapter
from tunery.inference.decode_attention import DecodeAttention
from tunery.inference.kv_cache import SlotKVCache

log = logging.getLogger(__name__)

# Rope types whose frequencies are fixed (the same table for every length); others change with the length.
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}
# Projection groups of a decoder layer: the modules sharing one input, in the order of the fused output.
_GROUPS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
    "head": ("lm_head",),  # the LM head (its plan entry is the last one, after the layers')
}
# Weights stored as oneDNN's pre-packed (blocked) matrices in these dtypes: measured ~2x faster than ``mm`` on a
# plain matrix for the one-row products of a decode step in bf16 (oneDNN no longer re-lays the weight out per
# call). The plain weights are then released, so the transformers forward of that model cannot run any more.
PACKED_DTYPES = {torch.bfloat16}
# Concatenated adapter sets kept (the running batch's, and a few prefills').
_PLAN_CACHE_SIZE = 4
# Up to this many LoRA columns per projection group (one or two rank-16 adapters on q, k and v), the packed
# (bf16) forward also keeps the group's delta as two oneDNN-packed products, ``x · A`` and ``h · B`` with the
# parts' ``B`` in one block matrix (zeros off the blocks): a SmolLM2 q/k/v group took 35 µs that way against
# 84 µs as one plain ``mm`` and three ``addmm_`` at one row (oneDNN re-lays a plain bf16 matrix out per call),
# 51 against 91 µs at 16. More columns keep the plain products (the block matrix grows with adapters x width).
_DENSE_RANK = 64


@dataclass(frozen=True, slots=True)
class _Part:
    """``out[:, lo:hi] += h[:, r0:r1] @ b``: one projection's share of a group's delta."""

    lo: int
    hi: int
    r0: int
    r1: int
    b: torch.Tensor


@dataclass(frozen=True, slots=True)
class _GroupDelta:
    """``h = x[index] @ a`` (columns of several adapters, masked per token), then each part adds ``h · B``."""

    a: torch.Tensor  # [in, Σr]
    parts: tuple[_Part, ...]
    column_uids: torch.Tensor  # [Σr] the adapter uid of each column (for masks)
    index: torch.Tensor | None = None  # tokens this delta applies to (grouped); None: every token, masked
    mask: torch.Tensor | None = None  # [tokens, Σr] 0/1, None when every token keeps every column
    # For few columns with packed base weights: ``a`` and every part's ``B`` as one block matrix ``[Σr, width]``,
    # both packed for oneDNN, so the delta is two products (see ``_DENSE_RANK``).
    dense: tuple[torch.Tensor, torch.Tensor] | None = None


LeanPlan = list[dict[str, list[_GroupDelta]]]
"""Per layer, per group: the LoRA deltas of one forward pass (empty dicts: the base model only)."""


@dataclass(frozen=True, slots=True)
class _Layer:
    """One decoder layer's weights: each projection's as ``linear`` takes it (packed, or a transposed view)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # hidden -> q+k+v
    o: torch.Tensor  # q -> hidden
    gate_up: torch.Tensor  # hidden -> 2·mlp
    down: torch.Tensor  # mlp -> hidden


class LeanLlama:
    """The decode and prefill forward of a ``LlamaForCausalLM`` in few operators (see the module docstring).

    Build it with ``build`` (which fuses the model's weights in place), make a LoRA plan per batch with
    ``plan`` and run ``forward``. Not thread-safe: one scheduler thread owns it.
    """

    def __init__(self, model: nn.Module, *, packed: bool = False) -> None:
        config = model.config
        inner = model.model
        self.num_layers = int(config.num_hidden_layers)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.group = self.heads // self.kv_heads
        self.eps = float(config.rms_norm_eps)
        self._eps = torch.tensor(self.eps, dtype=torch.float32, device=inner.embed_tokens.weight.device)
        self.mlp = int(config.intermediate_size)
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.packed = packed
        self.layers = [_packed_layer(layer) if packed else _fused_layer(layer) for layer in inner.layers]
        head = model.lm_head.weight.detach()
        self.lm_head = _pack(head) if packed else head.t()
        if packed:  # the plain matrices are not used any more (the embedding, tied or not, stays)
            _release(model.lm_head)
        self._widths = {
            "qkv": (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim),
            "o": (int(config.hidden_size),),
            "gate_up": (self.mlp, self.mlp),
            "down": (int(config.hidden_size),),
            "head": (int(config.vocab_size),),
        }
        rotary = inner.rotary_emb
        self._inv_freq = rotary.inv_freq.detach().to(torch.float32)
        self._rope_scale = float(rotary.attention_scaling)
        self._cos = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)
        self._sin = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)
        self._kv_index = torch.arange(self.kv_heads, device=self.device)[None, :]
        self._layer_index = torch.arange(self.num_layers, device=self.device)[:, None]
        self._concats: OrderedDict[tuple[int, ...], dict[tuple[int, str], _GroupDelta]] = OrderedDict()
        # Decode steps whose rows attend to prefixes use this kernel when set (``decode_attention``), else SDPA.
        self.decode_attention: DecodeAttention | None = None

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights one forward pass reads in full (every layer's, the norms' and the LM head's)."""
        tensors = [t for layer in self.layers for t in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        tensors += [t for layer in self.layers for t in (layer.input_norm, layer.post_norm)]
        tensors += [self.final_norm, self.lm_head]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: nn.Module) -> LeanLlama | None:
        """A lean forward for ``model``, or None (with the reason logged) if this module cannot run it exactly.

        The weights are fused in place; in ``PACKED_DTYPES`` on a CPU with oneDNN they are packed instead and the
        model's own projection weights released (the model object then only serves its config).
        """
        reason = unsupported_reason(model)
        if reason is not None:
            log.info("Using the transformers forward pass for %s: %s", type(model).__name__, reason)
            return None
        weight = model.model.embed_tokens.weight
        packed = weight.dtype in PACKED_DTYPES and weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
        return cls(model, packed=packed)

    # ------------------------------------------------------------------------------------------ LoRA plans
    def plan(
        self, rows: Sequence[LoraAdapter | None], tokens_per_row: int = 1, *, grouped: bool = False
    ) -> LeanPlan | None:
        """The LoRA deltas for a pass whose row ``i`` (``tokens_per_row`` tokens each) uses ``rows[i]``.

        None when an adapter adapts a module this forward does not have (use the ``transformers`` forward).
        ``grouped``: one product per adapter over its own tokens (for prefills with several adapters).
        """
        adapters = sorted({a.uid: a for a in rows if a is not None}.values(), key=lambda a: a.uid)
        plan: LeanPlan = [{} for _ in range(self.num_layers + 1)]
        if not adapters:
            return plan
        if any(not self._covers(a) for a in adapters):
            return None
        row_uids = [a.uid if a is not None else 0 for a in rows]
        if grouped and len(adapters) > 1:
            for adapter in adapters:
                _, concat = self._concatenated([adapter], exact=True)
                mine = [r for r, u in enumerate(row_uids) if u == adapter.uid]
                tokens = torch.tensor([r * tokens_per_row + t for r in mine for t in range(tokens_per_row)])
                row_index = torch.tensor(mine, device=self.device)
                for (layer, group), delta in concat.items():
                    index = row_index if group == "head" else tokens.to(self.device)
                    plan[layer].setdefault(group, []).append(
                        _GroupDelta(delta.a, delta.parts, delta.column_uids, index=index, dense=None)
                    )
            return plan
        used, concat = self._concatenated(adapters, exact=False)
        uids = torch.tensor(row_uids, device=self.device)
        every_row_same = len(used) == 1 and all(u == used[0] for u in row_uids)
        masks: dict[tuple[int, bool], torch.Tensor] = {}
        for (layer, group), delta in concat.items():
            mask = None
            if not every_row_same:
                per_row = group == "head"  # the head runs on each row's last token only
                key = (id(delta.column_uids), per_row)
                if key not in masks:
                    owners = uids if per_row else uids.repeat_interleave(tokens_per_row)
                    masks[key] = (delta.column_uids[None, :] == owners[:, None]).to(self.dtype)
                mask = masks[key]
            plan[layer][group] = [_GroupDelta(delta.a, delta.parts, delta.column_uids, mask=mask, dense=delta.dense)]
        return plan

    def _covers(self, adapter: LoraAdapter) -> bool:
        return all(_split_name(name) is not None for name in adapter.modules)

    def _concatenated(
        self, adapters: list[LoraAdapter], *, exact: bool
    ) -> tuple[tuple[int, ...], dict[tuple[int, str], _GroupDelta]]:
        """Per (layer, group): ``[A …]`` over the group's projections and adapters, and each projection's ``B``.

        Columns are laid out projection by projection (adapters in uid order inside each), so each projection's
        ``B`` multiplies one contiguous range of ``h``. Unless ``exact``, a cached set with a few more adapters is
        reused (its extra columns must then be masked). Returns the uids of the set used, and the deltas.
        """
        key = tuple(a.uid for a in adapters)
        slack = 0 if exact else max(1, len(key) // 2)
        usable = [k for k in self._concats if set(key) <= set(k) and len(k) <= len(key) + slack]
        if usable:
            best = min(usable, key=len)
            self._concats.move_to_end(best)
            return best, self._concats[best]
        by_layer: dict[tuple[int, str], dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]]] = {}
        for adapter in adapters:
            for name, module in adapter.modules.items():
                split = _split_name(name)
                assert split is not None
                layer, group, member = split
                by_layer.setdefault((layer, group), {}).setdefault(member, []).append((adapter.uid, module.a, module.b))
        result: dict[tuple[int, str], _GroupDelta] = {}
        for (layer, group), members in sorted(by_layer.items()):
            a_parts: list[torch.Tensor] = []
            uids: list[int] = []
            parts: list[_Part] = []
            offsets = _offsets(self._widths[group])
            rank = 0
            for member_index, member in enumerate(_GROUPS[group]):
                entries = members.get(member, [])
                if not entries:
                    continue
                start = rank
                for uid, a, _ in entries:
                    a_parts.append(a)
                    uids += [uid] * a.shape[1]
                    rank += a.shape[1]
                b = torch.cat([b for _, _, b in entries], dim=0) if len(entries) > 1 else entries[0][2]
                lo, hi = offsets[member_index]
                parts.append(_Part(lo, hi, start, rank, b))
            a_cat = torch.cat(a_parts, dim=1) if len(a_parts) > 1 else a_parts[0]
            column_uids = torch.tensor(uids, device=self.device)
            dense = None
            if self.packed and rank <= _DENSE_RANK:
                block = a_cat.new_zeros(rank, sum(self._widths[group]))
                for part in parts:
                    block[part.r0 : part.r1, part.lo : part.hi] = part.b
                dense = (_pack(a_cat.t()), _pack(block.t()))
            result[(layer, group)] = _GroupDelta(a_cat, tuple(parts), column_uids, dense=dense)
        self._concats[key] = result
        while len(self._concats) > _PLAN_CACHE_SIZE:
            self._concats.popitem(last=False)
        return key, result

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        columns: torch.Tensor,
        allowed: torch.Tensor,
        cache: SlotKVCache,
        first_slot: int,
        plan: LeanPlan,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``ids`` ``[rows, tokens]`` (rows in slots ``first_slot…``) and return last-position logits.

        Args:
            ids: token ids, left-padded to the same length per row.
            positions: the rotary position of each token.
            columns: the cache column each token's keys and values go to (``cache.scratch_column`` for padding).
            allowed: boolean ``[rows, tokens, read_length]``: which cache columns each token attends to.
            cache: the slot cache (``ensure_columns`` done by the caller for every column written).
            first_slot: the slot of row 0; rows occupy consecutive slots.
            plan: from ``plan`` for these rows (same ``tokens`` per row).
            lengths: for a decode step (one token per row) in which row ``i`` attends to exactly its first
                ``lengths[i]`` cache columns (what ``allowed`` says then): lets ``decode_attention`` run it.

        Returns:
            ``[rows, vocab]`` logits of each row's last token.
        """
        rows, tokens = ids.shape
        n = rows * tokens
        length = allowed.shape[-1]
        if cache.keys_buffer is None:
            cache.allocate(torch.empty((1, self.kv_heads, 1, self.head_dim), dtype=self.dtype, device=self.device))
        assert cache.keys_buffer is not None
        assert cache.values_buffer is not None
        heads, kv, d, g = self.heads, self.kv_heads, self.head_dim, self.group
        # Reads: [layers, rows, kv, length, d] views. Writes: one index_copy_ per layer into the flat buffer, at
        # ((layer · slots + slot) · kv + head) · width + column for each (token, head) in order.
        keys_read = cache.keys_buffer[:, first_slot : first_slot + rows, :, :length]
        values_read = cache.values_buffer[:, first_slot : first_slot + rows, :, :length]
        keys_flat, values_flat = cache.keys_buffer.view(-1, d), cache.values_buffer.view(-1, d)
        slots, width = cache.keys_buffer.shape[1], cache.keys_buffer.shape[3]
        token_slots = torch.arange(first_slot, first_slot + rows, device=self.device).repeat_interleave(tokens)
        where = (token_slots[:, None] * kv + self._kv_index) * width + columns.reshape(n, 1)
        write_index = where.reshape(1, -1) + self._layer_index * (slots * kv * width)  # [layers, tokens · kv]
        flat_positions = positions.reshape(n)
        self._ensure_rope(int(flat_positions.max()) + 1)
        cos = self._cos[flat_positions][:, None, :]  # [n, 1, d]
        sin = self._sin[flat_positions][:, None, :]  # sign folded in: rotate_half(x)·sin == flip(x)·sin_signed
        kernel = self.decode_attention
        step = None
        decoding = tokens == 1 and lengths is not None
        if kernel is not None and decoding and kernel.supports(self.dtype, self.device, g, d, keys_read[0]):
            assert lengths is not None
            step = kernel.step(lengths, g)
        mask = None
        if step is None:
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
            mask.masked_fill_(~allowed, float("-inf"))
            # Decode: [rows, 1, 1, length], broadcast over heads and the folded group. Prefill: queries are (group
            # member, token) pairs, so the token mask is repeated per member of the group.
            mask = mask[:, None] if tokens == 1 else mask[:, None].repeat(1, 1, self.group, 1)
        q_width, k_width = heads * d, kv * d
        h = F.embedding(ids.reshape(n), self.embed)
        for i, layer in enumerate(self.layers):
            deltas = plan[i]
            x = self._norm(h, layer.input_norm)
            qkv = self._linear(x, layer.qkv)
            if "qkv" in deltas:
                _apply(x, qkv, deltas["qkv"])
            qk = qkv[:, : q_width + k_width].view(n, heads + kv, d)
            qk = torch.addcmul(qk * cos, qk.view(n, heads + kv, 2, d // 2).flip(2).view(n, heads + kv, d), sin)
            keys_flat.index_copy_(0, write_index[i], qk[:, heads:].reshape(n * kv, d))
            values_flat.index_copy_(0, write_index[i], qkv[:, q_width + k_width :].reshape(n * kv, d))
            if tokens == 1:
                q = qk[:, :heads].view(rows, kv, g, d)
            else:
                q = qk[:, :heads].reshape(rows, tokens, kv, g, d).permute(0, 2, 3, 1, 4)
                q = q.reshape(rows, kv, g * tokens, d)
            if step is not None:
                attn = step(q, keys_read[i], values_read[i])
            else:
                attn = F.scaled_dot_product_attention(q, keys_read[i], values_read[i], attn_mask=mask)
            if tokens == 1:
                attn = attn.reshape(n, q_width)
            else:
                attn = attn.view(rows, kv, g, tokens, d).permute(0, 3, 1, 2, 4).reshape(n, q_width)
            if "o" in deltas:
                out = self._linear(attn, layer.o)
                _apply(attn, out, deltas["o"])
                h.add_(out)
            else:
                h = self._linear_add(h, attn, layer.o)
            x = self._norm(h, layer.post_norm)
            gate_up = self._linear(x, layer.gate_up)
            if "gate_up" in deltas:
                _apply(x, gate_up, deltas["gate_up"])
            act = F.silu(gate_up[:, : self.mlp]).mul_(gate_up[:, self.mlp :])
            if "down" in deltas:
                out = self._linear(act, layer.down)
                _apply(act, out, deltas["down"])
                h.add_(out)
            else:
                h = self._linear_add(h, act, layer.down)
        last = self._norm(h.view(rows, tokens, -1)[:, -1], self.final_norm)
        logits = self._linear(last, self.lm_head)
        if "head" in plan[-1]:
            _apply(last, logits, plan[-1]["head"])
        return logits

    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x · Wᵀ`` for a weight as ``_Layer`` keeps it (``x`` contiguous ``[tokens, in]``)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return torch.mm(x, weight)

    def _linear_add(self, h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``h + x · Wᵀ`` (the residual add fused into the product; ``h`` may be updated in place)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, h, weight, None, "add")
        return h.addmm_(x, weight)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``LlamaRMSNorm``: statistics in float32, the weight applied in the model's dtype."""
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        scale = torch.addcmul(self._eps, norm, norm, value=1.0 / x.shape[-1]).rsqrt_()  # 1 / sqrt(mean(x²) + eps)
        return weight * (x * scale).to(self.dtype)

    def _ensure_rope(self, positions: int) -> None:
        """Extend the cos/sin tables (as ``LlamaRotaryEmbedding`` computes them) to cover ``positions``."""
        if positions <= self._cos.shape[0]:
            return
        size = max(positions, 2 * self._cos.shape[0], 256)
        freqs = torch.arange(size, dtype=torch.float32, device=self.device)[:, None] * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos = (emb.cos() * self._rope_scale).to(self.dtype)
        sin = (emb.sin() * self._rope_scale).to(self.dtype)
        half = self.head_dim // 2
        self._sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``LeanLlama`` cannot run ``model`` exactly, or None when it can."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama":
        return f"model type {getattr(config, 'model_type', None)!r} is not llama"
    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not LlamaForCausalLM"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biases on projections"
    if int(getattr(config, "pretraining_tp", 1) or 1) != 1:
        return "pretraining_tp > 1"
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type not in _STATIC_ROPE:
        return f"rope type {rope_type!r} depends on the length"
    if config.num_attention_heads % config.num_key_value_heads:
        return "query heads not a multiple of key/value heads"
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq") or not hasattr(rotary, "attention_scaling"):
        return "no static rotary embedding"
    for layer in inner.layers:
        for group in (_GROUPS[name] for name in ("qkv", "o", "gate_up", "down")):
            for member in group:
                if type(layer.get_submodule(member)) is not nn.Linear:
                    return f"{member} is a {type(layer.get_submodule(member)).__name__}, not a plain nn.Linear"
    if type(model.lm_head) is not nn.Linear or model.lm_head.bias is not None:
        return "the LM head is not a plain linear layer"
    return None


def _fused_layer(layer: nn.Module) -> _Layer:
    """Fuse q/k/v and gate/up weights of one decoder layer, re-pointing the modules' weights at the slices."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up = _fused([mlp.gate_proj, mlp.up_proj])
    return _Layer(
        input_norm=layer.input_layernorm.weight.detach(),
        post_norm=layer.post_attention_layernorm.weight.detach(),
        qkv=qkv.t(),
        o=attn.o_proj.weight.detach().t(),
        gate_up=gate_up.t(),
        down=mlp.down_proj.weight.detach().t(),
    )


def _packed_layer(layer: nn.Module) -> _Layer:
    """One decoder layer's projections fused and packed for oneDNN; the modules' own weights are released."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = ([attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_proj, mlp.up_proj], [mlp.down_proj])
    qkv, o, gate_up, down = (_pack(torch.cat([m.weight.detach() for m in group], dim=0)) for group in groups)
    for group in groups:
        for module in group:
            _release(module)
    return _Layer(
        input_norm=layer.input_layernorm.weight.detach(),
        post_norm=layer.post_attention_layernorm.weight.detach(),
        qkv=qkv,
        o=o,
        gate_up=gate_up,
        down=down,
    )


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` as oneDNN's blocked layout for ``mkldnn._linear_pointwise``."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def _release(module: nn.Module) -> None:
    """Drop a linear layer's plain weight (an empty one stays: calling the layer fails loudly, never silently)."""
    module.weight = nn.Parameter(torch.empty(0, dtype=module.weight.dtype), requires_grad=False)


def _fused(linears: list[nn.Linear]) -> torch.Tensor:
    weights = [m.weight.detach() for m in linears]
    if _adjacent(weights):  # already one block (built before over the same model): use it as it is
        base = weights[0]
        total = sum(w.shape[0] for w in weights)
        return base.as_strided((total, base.shape[1]), base.stride(), base.storage_offset())
    fused = torch.cat(weights, dim=0).contiguous()
    row = 0
    with torch.no_grad():
        for module, weight in zip(linears, weights, strict=True):
            module.weight.data = fused[row : row + weight.shape[0]]
            row += weight.shape[0]
    return fused


def _adjacent(weights: list[torch.Tensor]) -> bool:
    """The matrices are contiguous and follow each other in one storage (their concatenation is a view)."""
    first = weights[0]
    end = first.data_ptr()
    for weight in weights:
        if (
            not weight.is_contiguous()
            or weight.data_ptr() != end
            or weight.untyped_storage().data_ptr() != (first.untyped_storage().data_ptr())
        ):
            return False
        end += weight.numel() * weight.element_size()
    return True


def _offsets(widths: tuple[int, ...]) -> list[tuple[int, int]]:
    result, start = [], 0
    for width in widths:
        result.append((start, start + width))
        start += width
    return result


def _split_name(name: str) -> tuple[int, str, str] | None:
    """``model.layers.3.self_attn.k_proj`` -> ``(3, "qkv", "self_attn.k_proj")``, ``lm_head`` -> ``(-1, "head",
    "lm_head")``; None for other modules."""
    if name == "lm_head":
        return -1, "head", "lm_head"
    prefix = "model.layers."
    if not name.startswith(prefix):
        return None
    number, _, member = name[len(prefix) :].partition(".")
    if not number.isdigit():
        return None
    for group, members in _GROUPS.items():
        if member in members:
            return int(number), group, member
    return None


def _apply(x: torch.Tensor, out: torch.Tensor, deltas: list[_GroupDelta]) -> None:
    """Add each delta of one projection group to ``out`` (``[tokens, width]``) in place."""
    for delta in deltas:
        if delta.dense is not None and delta.index is None:
            a, b = delta.dense
            h = torch.ops.mkldnn._linear_pointwise(x, a, None, "none", [], "")
            if delta.mask is not None:
                h.mul_(delta.mask)
            out.add_(torch.ops.mkldnn._linear_pointwise(h, b, None, "none", [], ""))
        elif delta.index is None:
            h = torch.mm(x, delta.a)
            if delta.mask is not None:
                h.mul_(delta.mask)
            for part in delta.parts:
                out[:, part.lo : part.hi].addmm_(h[:, part.r0 : part.r1], part.b)
        else:
            h = torch.mm(x.index_select(0, delta.index), delta.a)
            for part in delta.parts:
                out[:, part.lo : part.hi].index_add_(0, delta.index, torch.mm(h[:, part.r0 : part.r1], part.b))
