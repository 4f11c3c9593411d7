"""Yes/no judgements the MLLM reaches through its answers to the question bank.

The direct judges ask one question (``EmbedderConfig.match_question``: does this text describe the image?;
``verify_question``: are these two crops the same person?) and take the first word of the answer. A small MLLM
that answers "what colour is the top?" well can still fail to check a whole caption against an image in one
step. The answers judge asks the bank's short questions instead (or reads the answers cached at ingest) and
compares answers:

- ``match_score(answers, text)``: the share of what ``text`` states (``Vocabulary.parse``, closed under
  ``implied``) that the image's answers agree with;
- ``same_score(a, b)``: the share of bank questions two crops' answers agree on;

Both are graded in [0, 1], so a ROC curve has more than two points; a judge says yes at a threshold.

Answer re-ranking of text and composed search adds to the cosine ``answer_weight`` × the ``evidence`` of a
candidate's answers for what the query states about the wanted person (a caption's words, ``Vocabulary.stated``;
a modification's new values, ``Vocabulary.modification``), each answer weighed by how often the base answers that
question right (``answer_reliability``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from retrieval.dialogue import Vocabulary, normalize_answer

# SearchEngine.answer_weight the CLI uses (it scales `evidence`): the best composed identity R@1 of 0.02–0.2 on the
# demo world's val split, text Rank-1 within 0.5 of the best (benchmarks/answers.py)
ANSWER_WEIGHT = 0.1
# how sure an answer is for a question a base reports no accuracy for, and the bounds of any accuracy used
DEFAULT_RELIABILITY, RELIABILITY_BOUNDS = 0.9, (0.5, 0.98)


def bank_answerer(embedder, vocabulary: Vocabulary | None = None, views: bool = False) -> Callable[[Any, str], str]:
    """``answer(image, question)`` by the MLLM: a question of ``vocabulary``'s bank (default: the world's) gets
    one of its answer values (``MLLMEmbedder.answer(options=)``; a hub MLLM's free answer may name none), with
    ``views`` read from four views of the image (the bank asks nothing a mirror image changes); any other
    question a free answer. The engine asks one view: four lift the tiny base's upper-type answers by 3–4 points
    but lower its answer re-ranking (``benchmarks/answers.py``, ``demo_answer_views.json``)."""
    vocabulary = vocabulary or world_vocabulary()
    options = {q["question"]: list(vocabulary.options[q["key"]]) for q in vocabulary.bank}

    def answer(image, question: str) -> str:
        if question in options:
            return embedder.answer(image, question, options=options[question], views=views)
        return embedder.answer(image, question)

    return answer


def bank_answers(answer: Callable[[Any, str], str], image, bank: Sequence[dict[str, str]],
                 known: Mapping[str, str] | None = None) -> dict[str, str]:
    """The image's answer to every bank question, normalised, by question key: the ``known`` one (e.g. cached in
    a gallery point's payload) where there is one, else ``answer(image, question)``."""
    known = known or {}
    return {q["key"]: normalize_answer(known.get(q["key"]) or answer(image, q["question"])) for q in bank}


def gallery_answers(answer: Callable[[Any, str], str], images: Sequence[str], bank: Sequence[dict[str, str]],
                    known: Mapping[str, Mapping[str, str]] | None = None,
                    progress: Callable[[int], None] | None = None) -> dict[str, dict[str, str]]:
    """Every image's answers to the bank, by image path (``bank_answers``; ``known``: a collection's cache)."""
    out: dict[str, dict[str, str]] = {}
    for image in images:
        out[image] = bank_answers(answer, image, bank, (known or {}).get(image))
        if progress:
            progress(1)
    return out


def same_score(a: Mapping[str, str], b: Mapping[str, str]) -> float:
    """Share of the questions both crops were asked that they answer alike."""
    keys = a.keys() & b.keys()
    return sum(a[k] == b[k] for k in keys) / max(1, len(keys))


def agreement(answers: Mapping[str, str], stated: Mapping[str, str], vocabulary: Vocabulary) -> float:
    """Share of the `stated` answers that `answers` (one image's) agree with; 0.5 when none of them was asked."""
    keys = [k for k in stated if k in answers]
    if not keys:
        return 0.5
    return sum(vocabulary.canonical(k, answers[k]) == stated[k] for k in keys) / len(keys)


def evidence(answers: Mapping[str, str], stated: Mapping[str, str], vocabulary: Vocabulary | None,
             reliability: Mapping[str, float]) -> float:
    """How strongly one image's `answers` say it shows what is `stated`: the sum over the stated questions it was
    asked of ± the log-odds of its answer being right (``reliability``, per question key; 90 % where absent) —
    + when the answer agrees, − when not (a naive-Bayes log-likelihood ratio); 0 when none was asked. A caption
    stating five attributes weighs more than a modification changing one, and a contradiction on a question the
    MLLM answers at 98 % outweighs one it answers at 60 % (glasses). Without a vocabulary answers must match
    the stated words exactly."""
    total = 0.0
    for key in (k for k in stated if k in answers):
        p = min(max(reliability.get(key, DEFAULT_RELIABILITY), RELIABILITY_BOUNDS[0]), RELIABILITY_BOUNDS[1])
        said = vocabulary.canonical(key, answers[key]) if vocabulary is not None else answers[key]
        sign = 1.0 if said == stated[key] else -1.0
        total += sign * math.log(p / (1 - p))
    return total


def answer_reliability(embedder) -> dict[str, float]:
    """Per question key, the share of right answers the base reported on its validation people
    (``stage0_done.json`` beside its weights, written by stage 0 of ``lineup bootstrap``); empty for a base
    without that file (a hub checkpoint): every answer then counts as 90 % sure."""
    base = getattr(embedder, "base", None) or ""
    report = Path(base) / "stage0_done.json"
    if not base or not report.is_file():
        return {}
    try:
        return dict(json.loads(report.read_text())["val_vqa"]["by_attribute"])
    except (ValueError, KeyError, TypeError):
        return {}


def match_score(answers: Mapping[str, str], text: str, vocabulary: Vocabulary) -> float:
    """`agreement` with what `text` states (``Vocabulary.stated``)."""
    return agreement(answers, vocabulary.stated(text), vocabulary)


def world_vocabulary() -> Vocabulary:
    """The vocabulary of Lineup's question bank (``finetune.data.world``): its questions and answer words."""
    from finetune.data.world import ATTRIBUTES, QUESTION_BANK, VALUE_PHRASES, answer_from_attributes

    return Vocabulary.build(QUESTION_BANK, ATTRIBUTES, VALUE_PHRASES, answer_from_attributes)
