"""Writes the preference (DPO) task used by the DPO tests (run once; the JSONL files are committed).

Same reviews as ``make_sentiment.py``; both replies give the right sentiment, in two styles. The preferred
one is terse and starts with ``Verdict:``; the rejected one is chatty. The base model never answers in the
preferred style, so the share of held-out replies that start with ``Verdict:`` measures what DPO taught.
Deterministic.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_sentiment import BAD, GOOD, THINGS

SYSTEM = "Say what the review thinks."
CHATTY = [
    "Well, reading this, I would say the writer feels {s} about it overall.",
    "It sounds to me like the review is {s}, if I had to guess.",
    "Honestly I think this person is feeling pretty {s} here.",
    "From what they wrote, the overall mood seems {s} to me.",
]


def pair(rng: random.Random, text: str, sentiment: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text + "."}]},
        "preferred_output": [{"role": "assistant", "content": f"Verdict: {sentiment}."}],
        "non_preferred_output": [{"role": "assistant", "content": rng.choice(CHATTY).format(s=sentiment)}],
    }


def main() -> None:
    rng = random.Random(11)
    rows = [(g.format(t=t), "positive") for g in GOOD for t in THINGS]
    rows += [(b.format(t=t), "negative") for b in BAD for t in THINGS]
    rng.shuffle(rows)
    splits = {
        "preference_train.jsonl": rows[:64],
        "preference_valid.jsonl": rows[64:88],
        "preference_test.jsonl": rows[88:128],
    }
    here = Path(__file__).parent
    for name, part in splits.items():
        (here / name).write_text("".join(json.dumps(pair(rng, text, s)) + "\n" for text, s in part))


if __name__ == "__main__":
    main()
