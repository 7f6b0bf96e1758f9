"""Chat templates compiled the way transformers compiles them, so renderings match byte for byte.

Chat templates come with model folders and may be untrusted: they run in Jinja's immutable sandbox, with the
same options (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``), globals (``raise_exception``,
``strftime_now``, a safe ``dict`` and ``namespace``) and ``tojson`` filter as ``apply_chat_template``. The
``{% generation %}`` tag some templates use for assistant masks is accepted and rendered as plain text.
Rendering (what to pass to a template) is ``chat_tokenizer``'s job.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template in transformers' sandbox (cached: tokenizers of one model share it).

    Raises:
        jinja2.TemplateSyntaxError: the template is not valid Jinja.
    """
    return _environment().from_string(template)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox transformers renders chat templates in, with the same extra globals and filters."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Unlike Jinja's own ``tojson``, this does not HTML-escape: templates write JSON for the model, not a page.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates, without handing them the ``dict`` type and its unbound mutating methods."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace()``, refusing underscore attributes that could reach Python internals."""

    # No named ``self``, as in jinja2's Namespace, so that ``namespace(self=...)`` still works in templates.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for key in attrs:
            _check_namespace_key(key)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, key: str, value: Any) -> None:
        _check_namespace_key(key)
        jinja2.utils.Namespace.__setitem__(self, key, value)


def _check_namespace_key(key: Any) -> None:
    if isinstance(key, str) and key.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"Chat templates cannot set {key!r} on a namespace.")


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts ``{% generation %}...{% endgeneration %}`` (used by some templates) and renders its body as is."""

    tags = frozenset({"generation"})

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())
