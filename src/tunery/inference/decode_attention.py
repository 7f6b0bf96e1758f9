"""Decode-step attention over the slot KV cache as one small native kernel, compiled on the machine at start-up.

Why by hand: in a decode step each row has one new token, so attention is, per (row, KV head), the ``g`` query
heads of that group against the row's first ``length`` cached keys — a ``[g, d] x [d, length]`` product, a
softmax and a ``[g, length] x [length, d]`` product, with ``g`` = 3 for SmolLM2. torch's CPU flash attention
(``scaled_dot_product_attention``) spends most of its time on per-block set-up at that size: 390 µs a layer for
16 rows of 256 tokens in bf16 here (a 2-vCPU Zen 4), about half of a whole batch-16 decode step, where reading
the 3 MB of keys and values takes ~80 µs. ``bmm`` is no faster (it copies the strided cache views), and
``torch.compile`` of the same arithmetic gave 326 µs. This kernel reads each key and value row once per group
(all ``g`` queries use it while it is in registers), keeps the scores in float32, exponentiates with the vector
``expf`` of glibc's libmvec, and splits the (row, head) pairs over torch's own OpenMP threads (torch ships
``libgomp.so.1``; the kernel binds to the one already loaded, so there is one thread pool): 198 µs for 16 x 256
and 551 against 1,290 µs for 16 x 1,024 in bf16 (``bench/decode_step.py``, ``bench/RESULTS.md``).

It is C, not C++ against torch's headers, so compiling takes ~0.3 s instead of a minute: ``cc -O3 -march=native
-ffast-math -fopenmp``, cached per source, flags and CPU in ``cache_dir``. Where there is no compiler, or the
library does not load, or its answer differs from torch's on a check at load, ``DecodeAttention.load`` returns
None and the engine keeps SDPA. It only takes the decode case (one query token per row, each row attending to
a prefix of its slot: the first ``length`` columns); prefills stay on SDPA.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <omp.h>

#define MAXG 16
#define MAXD 256

static inline float bf16_to_f32(uint16_t x) { uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even, as torch's conversion */
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float same(float x) { return x; }

/* q: [rows, kv, g, d] contiguous; keys and values of (row b, head h, token l) at
   base + b * row_stride + h * head_stride + l * d; out like q. scratch: threads x scratch_stride floats. */
#define DEFINE_ATTEND(NAME, T, LOAD, STORE)                                                                     \
void NAME(const T* q, const T* k, const T* v, T* out, const int64_t* lengths, int64_t rows, int64_t kv,        \
          int64_t g, int64_t d, int64_t row_stride, int64_t head_stride, float scale, float* scratch,          \
          int64_t scratch_stride, int threads) {                                                               \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                         \
    for (int64_t task = 0; task < rows * kv; ++task) {                                                          \
        float qf[MAXG][MAXD], acc[MAXG][MAXD], row[MAXD], total[MAXG];                                          \
        float* scores = scratch + (int64_t)omp_get_thread_num() * scratch_stride;                              \
        int64_t b = task / kv, h = task % kv, length = lengths[b];                                              \
        const T* kh = k + b * row_stride + h * head_stride;                                                     \
        const T* vh = v + b * row_stride + h * head_stride;                                                     \
        const T* qh = q + (b * kv + h) * g * d;                                                                 \
        for (int64_t j = 0; j < g; ++j)                                                                         \
            for (int64_t e = 0; e < d; ++e) qf[j][e] = LOAD(qh[j * d + e]) * scale;                             \
        for (int64_t l = 0; l < length; ++l) {                                                                  \
            const T* kl = kh + l * d;                                                                           \
            for (int64_t e = 0; e < d; ++e) row[e] = LOAD(kl[e]);                                               \
            for (int64_t j = 0; j < g; ++j) {                                                                   \
                float s = 0.f;                                                                                  \
                for (int64_t e = 0; e < d; ++e) s += qf[j][e] * row[e];                                         \
                scores[j * length + l] = s;                                                                     \
            }                                                                                                   \
        }                                                                                                       \
        for (int64_t j = 0; j < g; ++j) {                                                                       \
            float* s = scores + j * length;                                                                     \
            float m = s[0], sum = 0.f;                                                                          \
            for (int64_t l = 1; l < length; ++l) m = s[l] > m ? s[l] : m;                                       \
            for (int64_t l = 0; l < length; ++l) { s[l] = expf(s[l] - m); sum += s[l]; }                        \
            total[j] = sum;                                                                                     \
            for (int64_t e = 0; e < d; ++e) acc[j][e] = 0.f;                                                    \
        }                                                                                                       \
        for (int64_t l = 0; l < length; ++l) {                                                                  \
            const T* vl = vh + l * d;                                                                           \
            for (int64_t e = 0; e < d; ++e) row[e] = LOAD(vl[e]);                                               \
            for (int64_t j = 0; j < g; ++j) {                                                                   \
                float p = scores[j * length + l];                                                               \
                for (int64_t e = 0; e < d; ++e) acc[j][e] += p * row[e];                                        \
            }                                                                                                   \
        }                                                                                                       \
        T* oh = out + (b * kv + h) * g * d;                                                                     \
        for (int64_t j = 0; j < g; ++j) {                                                                       \
            float inv = 1.f / total[j];                                                                         \
            for (int64_t e = 0; e < d; ++e) oh[j * d + e] = STORE(acc[j][e] * inv);                            \
        }                                                                                                       \
    }                                                                                                           \
}

DEFINE_ATTEND(attend_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
DEFINE_ATTEND(attend_f32, float, same, same)
"""
_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared")
_MAX_GROUP = 16  # MAXG and MAXD in the source
# Below this many cached tokens read per KV head (rows x longest row), torch's attention is as fast: one row of
# 256 tokens took 17.4 ms a SmolLM2 step with SDPA and 18.3 with the kernel (its per-call cost from Python).
MIN_TOKENS = 1024
_MAX_HEAD_DIM = 256
_ARGTYPES = (
    [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
)


class DecodeAttention:
    """The compiled kernel (``load``); call it like SDPA for a decode step whose rows attend to prefixes."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._functions = {torch.bfloat16: library.attend_bf16, torch.float32: library.attend_f32}
        for function in self._functions.values():
            function.restype = None
            function.argtypes = _ARGTYPES
        self._scratch = torch.empty(0, dtype=torch.float32)

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> DecodeAttention | None:
        """Compile (or reuse) the kernel for this CPU and check it against torch's; None if it cannot be used."""
        if platform.system() != "Linux" or platform.machine() not in {"x86_64", "aarch64"}:
            return None
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            log.info("No C compiler: decode attention stays on torch's scaled_dot_product_attention")
            return None
        folder = cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / f"tunery-kernels-{os.getuid()}"
        try:
            path = _compiled(compiler, folder)
            kernel = cls(ctypes.CDLL(str(path)), path)
            problem = kernel.self_check()
        except (OSError, subprocess.SubprocessError, AttributeError) as exc:
            log.warning("The decode attention kernel could not be built (%s); using torch's attention", exc)
            return None
        if problem is not None:
            log.warning("The decode attention kernel disagrees with torch's (%s); using torch's attention", problem)
            return None
        log.info("Decode attention runs on the native kernel %s", path)
        return kernel

    def supports(self, dtype: torch.dtype, device: torch.device, group: int, dim: int, keys: torch.Tensor) -> bool:
        """Whether ``step`` takes these (dtype, CPU, group and head sizes, keys laid out ``[..., tokens, dim]``)."""
        return (
            keys.shape[0] * keys.shape[2] >= MIN_TOKENS
            and dtype in self._functions
            and keys.dtype == dtype
            and device.type == "cpu"
            and group <= _MAX_GROUP
            and dim <= _MAX_HEAD_DIM
            and keys.stride(-1) == 1
            and keys.stride(-2) == dim
        )

    def step(self, lengths: torch.Tensor, group: int) -> DecodeStep:
        """The attention of one decode step in which row ``i`` attends to its first ``lengths[i]`` (≥ 1) columns."""
        lengths = lengths.to(torch.int64).contiguous()
        threads = max(1, torch.get_num_threads())
        longest = int(lengths.max())
        need = threads * group * longest
        if self._scratch.numel() < need:
            self._scratch = torch.empty(max(need, 2 * self._scratch.numel()), dtype=torch.float32)
        return DecodeStep(self._functions, lengths, self._scratch, group * longest, threads)

    def __call__(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """One call of ``step(lengths, g)`` (see ``DecodeStep.__call__``)."""
        return self.step(lengths, query.shape[2])(query, keys, values)

    def self_check(self) -> str | None:
        """Compare with torch's attention on random data in each dtype; the difference found, or None."""
        generator = torch.Generator().manual_seed(0)
        for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
            cache = torch.randn(3, 2, 70, 64, generator=generator).to(dtype)  # [rows, kv, columns, d]
            values = torch.randn(3, 2, 70, 64, generator=generator).to(dtype)
            query = torch.randn(3, 2, 3, 64, generator=generator).to(dtype)
            lengths = torch.tensor([70, 1, 33])
            got = self(query, cache, values, lengths).float()
            allowed = torch.arange(70)[None, :] < lengths[:, None]
            mask = torch.zeros(3, 1, 1, 70).masked_fill_(~allowed[:, None, None, :], float("-inf"))
            want = F.scaled_dot_product_attention(query.float(), cache.float(), values.float(), attn_mask=mask)
            error = float((got - want).abs().max())
            if not error <= tolerance:
                return f"{dtype}: largest difference {error:.3g}"
        return None


def _compiled(compiler: str, folder: Path) -> Path:
    """The shared library for this source, flags, compiler and CPU: built once into ``folder``, then reused."""
    key = hashlib.sha256("\0".join([_SOURCE, *_FLAGS, compiler, _cpu_identity()]).encode()).hexdigest()[:16]
    path = folder / f"decode_attention-{key}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        source = Path(work) / "decode_attention.c"
        source.write_text(_SOURCE)
        built = Path(work) / path.name
        subprocess.run(
            [compiler, *_FLAGS, str(source), "-o", str(built), "-lm"], check=True, capture_output=True, timeout=120
        )
        os.replace(built, path)  # atomic: another process building the same key keeps a whole file
    return path


def _cpu_identity() -> str:
    """The CPU's model and flags (``-march=native`` code may not run on another CPU sharing the cache)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


class DecodeStep:
    """``DecodeAttention`` bound to one step's lengths, called once per layer."""

    def __init__(
        self,
        functions: dict[torch.dtype, Any],
        lengths: torch.Tensor,
        scratch: torch.Tensor,
        scratch_stride: int,
        threads: int,
    ) -> None:
        self._functions = functions
        self._lengths = lengths
        self._scratch = scratch
        self._scratch_stride = scratch_stride
        self._threads = threads

    def __call__(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Like ``scaled_dot_product_attention(query, keys, values)`` with each row's keys cut to its length.

        Args:
            query: ``[rows, kv, g, d]`` (the ``g`` query heads sharing each KV head).
            keys, values: ``[rows, kv, ≥ max(lengths), d]`` views whose last two dimensions are dense (the slot
                cache's ``[:, :, :length]``), with the same strides.

        Returns:
            ``[rows, kv, g, d]``.
        """
        rows, kv, group, dim = query.shape
        assert keys.stride() == values.stride()
        assert tuple(keys.shape[:2]) == (rows, kv)
        assert self._lengths.shape == (rows,)
        assert group * int(keys.shape[2]) >= self._scratch_stride  # every row's keys are there
        query = query.contiguous()
        out = torch.empty_like(query)
        self._functions[query.dtype](
            query.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            out.data_ptr(),
            self._lengths.data_ptr(),
            rows,
            kv,
            group,
            dim,
            keys.stride(0),
            keys.stride(1),
            dim**-0.5,
            self._scratch.data_ptr(),
            self._scratch_stride,
            self._threads,
        )
        return out
