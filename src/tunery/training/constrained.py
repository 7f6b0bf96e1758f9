"""Constrained decoding for RFT sampling: every answer is drawn inside the job's ``response_format`` JSON schema.

evals-graders-rft.md (``response_format``): "When set, sampling is constrained to the schema and
``sample.output_json`` is filled". ``SchemaConstraint.compile`` turns the schema into a grammar over the model's
own tokenizer once per run; ``SchemaConstraint.rows`` gives one matcher per row of a batched sampling step (a
copy of the compiled one). Before each draw, ``ConstrainedRows.mask`` sets every unfinished row's logits outside
the tokens its matcher allows to ``-inf``; after it, ``accept`` feeds the drawn token to the row's matcher. The
tokenizer's end-of-turn ids are the grammar's end tokens: they are allowed only where the JSON is complete, and
a row whose JSON cannot go on may only end, so every answer that finishes is one JSON document and its end of
turn. Without a ``response_format`` none of this runs (the samplers take ``constraint=None``).

Why a library (llguidance): compiling JSON Schema into a token-level grammar over a byte-level BPE vocabulary,
and computing a mask in tens of microseconds, is a project of its own (llguidance, xgrammar, outlines-core).
llguidance's wheel has no dependencies; xgrammar's pulls in triton. Each live row's matcher fills its
row of one int32 bitmask per step (~10-20 µs a row here; llguidance's thread-pool executor measured slower and
less steady on 2 busy cores); unpacking it onto the logits is ``numpy.unpackbits`` and one ``torch.where``
(llguidance's torch helper would ``torch.compile`` on first use; a shift-and-mask unpacking in torch measured
3x slower here).

Choices:

* compact JSON: ``json.dumps``'s separators (``", "``, ``": "``) and no other whitespace, unless the schema's
  ``x-guidance`` says otherwise — with free whitespace a random policy can write blanks until
  ``max_new_tokens`` (``graders.response_format.SAMPLING_JSON_OPTIONS``);
* lenient: keywords llguidance does not implement are ignored, so the constraint may be looser than the
  schema; the grader side (``graders.response_format``) still scores an answer that does not conform 0 as a
  ``sample_parse_error`` — as it does an answer cut off at ``max_new_tokens``. A schema llguidance cannot
  compile at all is refused at job create (``graders.schema_error``); should one reach a run, sampling is left
  unconstrained (logged), with the same safety net;
* log-probabilities: the GRPO loss (``rft._token_log_probs``) scores each drawn token under the model's own,
  unmasked distribution, and ``π_old`` is that same forward detached (no log-probs are stored from sampling),
  so the ratio and the KL to the reference compare like with like. The mask only decides which tokens are
  drawn, as a separate guided-generation engine does for TRL; the gradient then also teaches the model the
  format itself, which the fine-tuned model needs when it is served without a constraint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import llguidance
import numpy as np
import torch

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.graders.response_format import SAMPLING_JSON_OPTIONS

log = logging.getLogger(__name__)

_ALL = -1  # a bitmask word allowing its 32 tokens


class SchemaConstraint:
    """A ``response_format`` JSON schema compiled against one tokenizer (see the module docstring)."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, stop_ids: Sequence[int]) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size
        self.stop_ids = tuple(stop_ids)

    @classmethod
    def compile(
        cls, schema: dict[str, Any], tokenizer: ChatTokenizer, stop_ids: Sequence[int]
    ) -> SchemaConstraint | None:
        """The schema as a grammar over ``tokenizer``, ending at ``stop_ids``; None (logged) if llguidance cannot
        compile it."""
        lltok = llguidance.LLTokenizer(tokenizer.tokenizer_json(), eos_token=list(stop_ids))
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=SAMPLING_JSON_OPTIONS)  # type: ignore[arg-type]
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
        if is_error:
            log.warning("response_format cannot constrain sampling (%s); sampling unconstrained", "; ".join(messages))
            return None
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if matcher.is_error():
            log.warning("response_format cannot constrain sampling (%s); sampling unconstrained", matcher.get_error())
            return None
        return cls(matcher, lltok.vocab_size, stop_ids)

    def rows(self, count: int) -> ConstrainedRows:
        """Fresh matchers for ``count`` rows sampled together."""
        return ConstrainedRows(self, [self._matcher.deep_copy() for _ in range(count)])


class ConstrainedRows:
    """The matchers of one batched sampling step's rows: ``mask`` the logits, draw, ``accept`` the tokens."""

    def __init__(self, constraint: SchemaConstraint, matchers: list[llguidance.LLMatcher]) -> None:
        self._matchers = matchers
        words = (constraint.vocab_size + 31) // 32
        self._bitmask = torch.full((len(matchers), words), _ALL, dtype=torch.int32)
        self._stop_only = torch.zeros(words, dtype=torch.int32)
        for token in constraint.stop_ids:
            word, bit = divmod(token, 32)
            if word < words:
                value = 1 << bit
                self._stop_only[word] |= value - (1 << 32) if value >= 1 << 31 else value  # as a signed int32

    def mask(self, logits: torch.Tensor, done: Sequence[bool]) -> torch.Tensor:
        """``logits`` (``rows × vocab``) with ``-inf`` wherever an unfinished row's matcher forbids the token
        (finished rows are left as they are: their draws are ignored)."""
        words = self._bitmask.shape[1]
        self._bitmask.fill_(_ALL)
        for i, matcher in enumerate(self._matchers):
            if done[i]:
                continue
            matcher.unsafe_compute_mask_ptr(self._bitmask[i].data_ptr(), words * 4)  # GIL released meanwhile
            if matcher.is_error():  # cannot happen when only allowed tokens are drawn; end the row rather than fail
                log.warning("constrained sampling: %s; the row ends here", matcher.get_error())
                self._bitmask[i] = self._stop_only
        # Bit b of word w allows token 32·w + b: little-endian bytes, unpacked least significant bit first.
        unpacked = np.unpackbits(self._bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(unpacked).view(torch.bool).to(logits.device)
        width = logits.shape[-1]
        if allowed.shape[1] >= width:
            allowed = allowed[:, :width]
        else:  # logits wider than the tokenizer (a padded embedding): the extra ids are never allowed
            allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]), value=False)
        return torch.where(allowed, logits, float("-inf"))

    def accept(self, row: int, token: int) -> None:
        """Row ``row`` drew ``token`` (one of those its mask allowed)."""
        self._matchers[row].consume_token(token)
