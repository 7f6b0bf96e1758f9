"""The ``text_similarity`` grader: fuzzy_match, BLEU, GLEU, METEOR, ROUGE-1…5 and ROUGE-L in [0, 1].

Metrics come from rapidfuzz, nltk and rouge-score (spec §1.4). Tokenisation is nltk's regex
``wordpunct_tokenize`` on lower-cased text, because ``word_tokenize`` needs the ``punkt`` corpus,
which cannot be downloaded at run time. METEOR is nltk's ``meteor_score`` with exact and Porter-stem
matching only: its WordNet synonym stage needs the ``wordnet`` corpus, so it is given an empty synonym
source (scores can be a little lower than with WordNet when the texts use synonyms). ``cosine`` needs an
embedding model, which Tunery does not serve: it is rejected as a definition error.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from tunery.graders.errors import InvalidGrader
from tunery.graders.outcome import Outcome
from tunery.graders.specs import GraderTextSimilarity
from tunery.graders.templates import render

COSINE_UNAVAILABLE = (
    "The 'cosine' metric needs an embedding model, and this Tunery server has none configured; "
    "use fuzzy_match, bleu, gleu, meteor or rouge_1..rouge_5 / rouge_l."
)


def grade_text_similarity(grader: GraderTextSimilarity, *, sample: dict[str, Any], item: dict[str, Any]) -> Outcome:
    text = render(grader.input, sample=sample, item=item, param="input")
    reference = render(grader.reference, sample=sample, item=item, param="reference")
    return Outcome(reward=similarity(grader.evaluation_metric, text, reference))


def similarity(metric: str, text: str, reference: str) -> float:
    """The score of ``text`` (the model output) against ``reference`` for ``metric``, in [0, 1]."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz, utils

        return float(fuzz.WRatio(text, reference, processor=utils.default_process)) / 100.0
    if metric.startswith("rouge_"):
        key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
        return float(_rouge(key).score(reference, text)[key].fmeasure)
    hypothesis, references = _tokens(text), [_tokens(reference)]
    if metric == "bleu":
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        if not hypothesis or not references[0]:
            return 0.0
        return float(sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1))
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu(references, hypothesis)) if hypothesis and references[0] else 0.0
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        if not hypothesis or not references[0]:
            return 0.0
        return float(meteor_score(references, hypothesis, wordnet=_NoSynonyms()))
    if metric == "cosine":
        raise InvalidGrader(COSINE_UNAVAILABLE, param="evaluation_metric")
    raise InvalidGrader(f"Unknown evaluation_metric '{metric}'.", param="evaluation_metric")


def _tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text.lower())


@cache
def _rouge(key: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key], use_stemmer=False)


class _NoSynonyms:
    """Stands in for nltk's WordNet reader in METEOR: no synonyms (no corpus download)."""

    def synsets(self, word: str) -> list[Any]:
        return []
