"""Where a job's saved trainer state is shared in the blob store, and dropping it once nothing can resume.

The worker (``services.runs``) writes it at each checkpoint and at a pause, so any server can resume the job;
the worker drops it when the job ends while it holds it. A job that ends or goes without a trainer (a paused
job cancelled or deleted, ``services.jobs``) drops it here too: nobody else would, and it is a copy of the
whole adapter plus optimizer state.
"""

from __future__ import annotations

import logging

from tunery.storage.blobs import BlobStore

log = logging.getLogger(__name__)

STATE_MANIFEST = "latest.json"  # under shared_state_prefix: {"step": N, "files": [...]}


def shared_state_prefix(job_id: str) -> str:
    """Where a job's saved state is shared in the blob store."""
    return f"jobs/{job_id}/state"


def drop_shared_state(blobs: BlobStore, job_id: str) -> bool:
    """Delete the job's shared state: the manifest first, so a half-done drop is never read as a state to resume
    from, then every file under the prefix (leftovers of an interrupted share too). Only keys under
    ``jobs/<job id>/state/`` go: the job's checkpoints and model live under ``adapters/`` and stay.

    Returns False when the store failed (logged; the job's end does not wait on the store).
    """
    prefix = shared_state_prefix(job_id)
    try:
        keys = [key for key, _ in blobs.listing(f"{prefix}/")]
        for key in sorted(keys, key=lambda k: k != f"{prefix}/{STATE_MANIFEST}"):
            blobs.delete(key)
    except Exception:
        log.warning("job %s: could not delete its shared state", job_id, exc_info=True)
        return False
    return True
