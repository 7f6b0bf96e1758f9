"""The precisions numerically sensitive tests run in, and the tolerance each one allows.

fp32 always; bf16 as well where this machine measures bf16 matmuls clearly faster than fp32 (the same probe,
``tunery.hardware.precision``, that makes dtype ``auto`` train in bf16 here). ``TUNERY_WORKER__DTYPE=fp32`` or
``=bf16`` forces one precision for these tests, for every training fixture, and for the servers the
integration tests start (they inherit the environment), so the whole suite can be run in either.

Tolerances: two computations that are equal in exact arithmetic but round differently (another packing
layout, other micro-batches, other kernel shapes) agree to fp32's rounding (~1e-7 relative per operation,
~1e-5 after a few hundred of them) in fp32. Under bf16 autocast every matmul input is rounded to 8 mantissa
bits (eps 2^-8 = 3.9e-3); the errors are not systematic, so over a step they average down to well below eps.
The bf16 bounds below sit above what we measured (stated beside each) and below eps: a bug (a mask that lets
one example see another, a dropped token) moves a loss by far more. Runs that repeat the very same computation
(same seed, a resumed run) must agree exactly, in both precisions.
"""

from __future__ import annotations

import os
from functools import cache

import pytest

FORCED = os.environ.get("TUNERY_WORKER__DTYPE", "").strip().lower()
if FORCED not in ("", "auto", "fp32", "bf16"):
    raise pytest.UsageError(f"TUNERY_WORKER__DTYPE={FORCED!r}: use fp32, bf16 or auto")

# The precision of tests that are not run in each: the forced one, else fp32 (the reference arithmetic).
DEFAULT = FORCED if FORCED in ("fp32", "bf16") else "fp32"

# Relative tolerance of a loss computed two ways that are equal in exact arithmetic (bf16 measured: the two
# packing layouts 2e-5 over a run, a chunked step against full logits well inside the bound).
REL = {"fp32": 1e-5, "bf16": 5e-4}
# A gradient tensor computed two ways under bf16, as ||a - b|| / ||a||: measured 2e-4 to 3.9e-3 (about eps).
GRADIENT_REL_BF16 = 1e-2
# Absolute tolerance of logits computed two ways (logits of the tiny model are O(1)).
LOGITS_ATOL = {"fp32": 1e-4, "bf16": 1e-2}  # bf16 measured: 2e-3 (packed rows against each example alone)


@cache
def sensitive() -> tuple[str, ...]:
    """The precisions to run numerically sensitive tests in on this machine."""
    if FORCED in ("fp32", "bf16"):
        return (FORCED,)
    from tunery.hardware.precision import fastest_format  # torch: only for the tests that train

    return ("fp32", "bf16") if fastest_format("autocast") == "bf16" else ("fp32",)


def amp(name: str) -> object:
    """The autocast dtype of a precision name: None for fp32."""
    import torch

    return torch.bfloat16 if name == "bf16" else None
