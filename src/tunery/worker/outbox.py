"""The outbox loop: a background thread of ``tunery serve`` / ``tunery worker`` that sends due events."""

from __future__ import annotations

import logging
import threading

from tunery.services.outbox import OutboxSender
from tunery.storage.webhooks import OUTBOX_WAKEUP
from tunery.worker.runner import new_worker_id

log = logging.getLogger(__name__)


def run_outbox(sender: OutboxSender, stop: threading.Event, poll_s: float) -> None:
    """Send due rows until ``stop`` is set. When nothing was due it waits ``poll_s``, or less when a job of
    this process ends meanwhile (``OUTBOX_WAKEUP``)."""
    sender_id = "outbox-" + new_worker_id()
    while not stop.is_set():
        OUTBOX_WAKEUP.clear()
        try:
            busy = sender.run_once(sender_id) > 0
        except Exception:  # the edge: a database hiccup must not end the thread
            log.exception("outbox sender: unexpected error; continuing")
            busy = False
        if not busy:
            OUTBOX_WAKEUP.wait(poll_s)


def start_outbox_thread(sender: OutboxSender, stop: threading.Event, poll_s: float) -> threading.Thread:
    thread = threading.Thread(target=run_outbox, args=(sender, stop, poll_s), name="tunery-outbox", daemon=True)
    thread.start()
    return thread
