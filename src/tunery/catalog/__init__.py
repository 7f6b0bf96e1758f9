"""Base models: which ones this server offers, where their files are, and their tokenizers and chat templates.

Only torch-free names are exported here, so the web process can import the package. Preparing weights
(GGUF conversion, hub downloads) lives in ``tunery.catalog.materialize``; import it by its path.
"""

from tunery.catalog.chat_tokenizer import ChatTokenizer, EncodedChat
from tunery.catalog.models import (
    BUNDLED_MODELS,
    BaseModelSpec,
    Catalog,
    SourceKind,
    parse_model_ref,
)

__all__ = [
    "BUNDLED_MODELS",
    "BaseModelSpec",
    "Catalog",
    "ChatTokenizer",
    "EncodedChat",
    "SourceKind",
    "parse_model_ref",
]
