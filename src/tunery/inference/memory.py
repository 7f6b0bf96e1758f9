"""Give the C heap's freed pages back to the system after loading a model.

Loading a model allocates far more than it keeps (the checkpoint's float32 tensors on the way to bf16, the
plain matrices the lean forward packs and releases, the tokenizer's build-up). glibc's ``malloc`` keeps most
of what is freed inside its arenas for reuse, so the engine process stayed at the peak of the load: 1,023 MiB
resident for SmolLM2 in bf16 after a first answer, of which ``malloc_trim(0)`` (which walks every arena,
including the loading thread's) returned 228 MiB to the system (795 MiB after). Nothing is lost: the pages
are only unmapped, and later allocations get fresh ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def release_freed_memory() -> bool:
    """``malloc_trim(0)`` where the C library is glibc; whether any memory was returned (False elsewhere)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
