"""Many LoRA adapters, and the bare base model, in ONE forward pass: each row of the batch gets its own delta.

This is where Tunery's serving edge comes from. peft activates one adapter at a time (``set_adapter``), so a
server built on it runs requests for different adapters one after the other, or merges weights per adapter.
Here the base model is left untouched and a forward hook on every adapted ``nn.Linear`` adds, for each row
``i`` of the batch, ``x_i · A_i · B_i`` (the scale is already folded into ``B_i``, see ``adapters``):

* the base projection ``x · W`` is computed once for the whole batch, by the model's own layer;
* the adapters present in the batch are concatenated along the rank: ``A = [A_1 | … | A_n]`` (``[in, Σr]``)
  and ``B = [B_1; …; B_n]`` (``[Σr, out]``), built when the set of adapters in the batch changes and cached
  (a cached set with a few extra adapters is reused, so rows leaving do not cause copies);
* per layer the delta is then three matrix ops whatever the mix: ``h = x · A`` (every row against every
  adapter, ``Σr`` is small), ``h *= M`` where the 0/1 mask ``M[i]`` keeps only the columns of row ``i``'s own
  adapter (all zeros for a base-model row), and ``out += h · B``.

The price is that every row is multiplied by all ``Σr`` columns, not only its own ``r``. In a decode step
that is noise next to reading the base weights; in a prefill with 8 rank-16 adapters on q,k,v,o of SmolLM2
it would be ~14% more arithmetic than the ideal ~2%, so prefills use ``plan(..., grouped=True)``: one product
per adapter over its own rows (a loop over adapters is cheap when each row carries many tokens). In a decode
step the concatenation avoids both a gather of per-row weights and that loop, which cost more than the waste
on a CPU. When all rows share one adapter the mask is skipped; a batch without adapters runs the base model
alone.

It does not load adapters (``adapters``) or decide which rows share a pass (``batching``).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunery.inference.adapters import LoraAdapter

# Concatenations kept for recently seen sets of adapters (the running batch's, and those of a few prefills).
_CONCAT_CACHE_SIZE = 4


@dataclass(frozen=True, slots=True)
class _Delta:
    """``out[rows] += ((x[rows] @ a) * mask) @ b``; ``rows`` None means every row."""

    a: torch.Tensor  # [in, Σr]
    b: torch.Tensor  # [Σr, out]
    mask: torch.Tensor | None  # [rows, 1, Σr] of 0/1, or None when every row uses every column
    rows: torch.Tensor | None = None


LoraPlan = dict[str, list[_Delta]]
"""What each hooked layer adds during one forward pass, by module name. Empty: the base model only."""


class MultiLora:
    """Forward hooks over a model's linear layers that add each batch row's own LoRA delta.

    Build a plan for the rows of a batch with ``plan`` (one adapter or ``None`` per row, in batch order) and
    run the forward pass inside ``applied(plan)``. Hooks are installed on a layer the first time an adapter
    targets it and do nothing outside ``applied``. Not thread-safe: one scheduler thread owns it.
    """

    def __init__(self, model: nn.Module) -> None:
        self._linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._hooks: dict[str, Any] = {}
        self._plan: LoraPlan = {}
        self._concats: OrderedDict[tuple[int, ...], dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]]
        self._concats = OrderedDict()

    @property
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of every linear layer, by module name."""
        return {name: (m.in_features, m.out_features) for name, m in self._linears.items()}

    def plan(self, rows: Sequence[LoraAdapter | None], *, grouped: bool = False) -> LoraPlan:
        """The per-layer deltas for a batch whose row ``i`` uses ``rows[i]`` (``None``: the base model).

        ``grouped`` plans one product per adapter over its own rows instead of the concatenation. It suits a
        prefill, where many tokens per row make the arithmetic count and a loop over adapters costs little.
        """
        adapters = sorted({a.uid: a for a in rows if a is not None}.values(), key=lambda a: a.uid)
        if not adapters:
            return {}
        if grouped and len(adapters) > 1:
            return self._grouped(rows, adapters)
        concat = self._concatenated(adapters)
        device = next(iter(concat.values()))[0].device
        dtype = next(iter(concat.values()))[0].dtype
        row_uids = [a.uid if a is not None else 0 for a in rows]
        masks: dict[tuple[int, ...], torch.Tensor | None] = {}
        plan: LoraPlan = {}
        for name, (a, b, layout) in concat.items():
            if layout not in masks:
                masks[layout] = _mask(row_uids, layout, device, dtype)
            plan[name] = [_Delta(a=a, b=b, mask=masks[layout])]
            self._hook(name)
        return plan

    def _grouped(self, rows: Sequence[LoraAdapter | None], adapters: list[LoraAdapter]) -> LoraPlan:
        plan: LoraPlan = {}
        for adapter in adapters:
            device = next(iter(adapter.modules.values())).a.device
            index = torch.tensor([i for i, row in enumerate(rows) if row is adapter], device=device)
            for name, module in adapter.modules.items():
                plan.setdefault(name, []).append(_Delta(a=module.a, b=module.b, mask=None, rows=index))
                self._hook(name)
        return plan

    @contextlib.contextmanager
    def applied(self, plan: LoraPlan) -> Iterator[None]:
        """Run the model's forward passes inside this block with ``plan``'s deltas."""
        self._plan = plan
        try:
            yield
        finally:
            self._plan = {}

    def _concatenated(
        self, adapters: list[LoraAdapter]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]:
        """Per module: ``[A_1 | … ]``, ``[B_1; …]`` and the uids and ranks of the adapters that fill its columns.

        A cached concatenation of a few more adapters than needed is reused (their columns are masked out):
        rows finishing would otherwise force a new copy of every matrix each time an adapter leaves the batch.
        """
        key = tuple(a.uid for a in adapters)
        slack = max(1, len(key) // 2)
        usable = [k for k in self._concats if set(key) <= set(k) and len(k) <= len(key) + slack]
        if usable:
            best = min(usable, key=len)
            self._concats.move_to_end(best)
            return self._concats[best]
        names = sorted({name for a in adapters for name in a.modules})
        result = {}
        for name in names:
            parts = [(a.uid, a.modules[name]) for a in adapters if name in a.modules]
            a_cat = torch.cat([m.a for _, m in parts], dim=1) if len(parts) > 1 else parts[0][1].a
            b_cat = torch.cat([m.b for _, m in parts], dim=0) if len(parts) > 1 else parts[0][1].b
            layout = tuple(x for uid, m in parts for x in (uid, m.rank))
            result[name] = (a_cat, b_cat, layout)
        self._concats[key] = result
        while len(self._concats) > _CONCAT_CACHE_SIZE:
            self._concats.popitem(last=False)
        return result

    def _hook(self, name: str) -> None:
        if name in self._hooks:
            return

        def add_delta(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x, width = args[0], output.shape[-1]
            for delta in self._plan.get(name, ()):
                if delta.rows is None:
                    h = x.reshape(-1, x.shape[-1]) @ delta.a
                    if delta.mask is not None:
                        h.view(x.shape[0], -1, delta.a.shape[1]).mul_(delta.mask)
                    output.view(-1, width).addmm_(h, delta.b)
                else:
                    part = x.index_select(0, delta.rows)
                    h = (part.reshape(-1, x.shape[-1]) @ delta.a) @ delta.b
                    output.index_add_(0, delta.rows, h.view(*part.shape[:-1], width))

        self._hooks[name] = self._linears[name].register_forward_hook(add_delta)


def _mask(
    row_uids: list[int],
    layout: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """0/1 ``[rows, 1, Σr]``: row ``i`` keeps the columns of its own adapter; None if no column needs masking."""
    segments = list(zip(layout[0::2], layout[1::2], strict=True))
    if len(segments) == 1 and all(uid == segments[0][0] for uid in row_uids):
        return None
    values = [[1.0 if uid == row_uid else 0.0 for uid, rank in segments for _ in range(rank)] for row_uid in row_uids]
    return torch.tensor(values, device=device, dtype=dtype).unsqueeze(1)
