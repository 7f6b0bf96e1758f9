"""The errors an inference engine raises to its callers, as ``ServiceError``s the API edge already maps.

Torch-free, so the chat service can catch them without importing the ML stack. Bad request values
(``max_tokens < 1``, a prompt longer than the context) are plain ``InvalidRequest``; the engine being
closed is ``Unavailable``. Only the failures that need their own name live here.
"""

from __future__ import annotations

from tunery.domain.errors import InvalidRequest, ServiceError, Unavailable


class AdapterLoadError(ServiceError):
    """A LoRA adapter folder is missing, unreadable, unsupported or does not fit the base model (HTTP 500).

    Only the request that named the adapter fails; the message (shown to users) says which adapter, which
    folder and what is wrong with it.
    """

    default_code = "adapterLoadFailed"


class AdapterTooLarge(AdapterLoadError, InvalidRequest):
    """An adapter takes more memory than the whole adapter memory budget (``inference.adapter_cache_mb``): HTTP 400
    on ``model``, since nothing is broken and retrying cannot help.

    Refused at once rather than evicting every other adapter and still not fitting; raising the budget is the fix.
    """

    default_code = "adapterTooLarge"


class GenerationError(ServiceError):
    """The engine failed while producing this request's tokens (HTTP 500); the cause is chained.

    Raised from the caller's iterator. Requests that did not share the failing forward pass go on.
    """

    default_code = "generationFailed"


class AdapterLoadTimeout(Unavailable):
    """A request's adapter was not in memory and could not be loaded within the wait allowed (HTTP 503).

    Either every adapter slot stayed pinned by running requests for the whole wait, or the load itself was too
    slow; the message says which. Retrying later is the fix, so it is a 503 with ``retry-after``.
    """

    default_code = "adapterLoadTimeout"


class EngineRestarted(Unavailable):
    """The engine process died (killed, crashed, over its memory limit, or hung and was killed) while this request
    was in it (HTTP 503).

    The supervisor restarts it; the same request sent again is answered by the new process.
    """

    default_code = "engineRestarted"
