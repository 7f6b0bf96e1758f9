"""Writes the sentiment task used by the SmolLM2 end-to-end tests (run once; the JSONL files are committed).

The labels are ``thumbs-up`` / ``thumbs-down``: the base model cannot guess that exact answer format, a
fine-tune learns it quickly, and held-out sentences test that it generalises. Deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Label the review. Answer thumbs-up or thumbs-down."
THINGS = [
    "movie",
    "pizza",
    "hotel",
    "phone",
    "book",
    "concert",
    "laptop",
    "museum",
    "coffee",
    "game",
    "bicycle",
    "restaurant",
    "album",
    "camera",
    "park",
    "train ride",
    "jacket",
    "podcast",
    "show",
    "app",
]
GOOD = [
    "I loved the {t}, it was wonderful",
    "The {t} was excellent and I would recommend it",
    "What a fantastic {t}, truly great",
    "The {t} made me so happy",
    "Brilliant {t}, absolutely delightful",
    "This {t} is the best I have tried",
    "The {t} exceeded every expectation",
    "A superb {t}, pure joy",
]
BAD = [
    "I hated the {t}, it was awful",
    "The {t} was terrible and a waste of money",
    "What a disappointing {t}, truly bad",
    "The {t} made me so angry",
    "Dreadful {t}, absolutely horrible",
    "This {t} is the worst I have tried",
    "The {t} failed every expectation",
    "A miserable {t}, pure pain",
]


def example(text: str, label: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text + "."},
            {"role": "assistant", "content": label},
        ]
    }


def main() -> None:
    rng = random.Random(7)
    rows = [(g.format(t=t), "thumbs-up") for g in GOOD for t in THINGS]
    rows += [(b.format(t=t), "thumbs-down") for b in BAD for t in THINGS]
    rng.shuffle(rows)
    splits = {
        "sentiment_train.jsonl": rows[:64],
        "sentiment_valid.jsonl": rows[64:88],
        "sentiment_test.jsonl": rows[88:128],
    }
    here = Path(__file__).parent
    for name, part in splits.items():
        (here / name).write_text("".join(json.dumps(example(text, label)) + "\n" for text, label in part))


if __name__ == "__main__":
    main()
