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
a modification's new values, ``Vocabulary.modification``), each answer weighed by how the base answers
(``answer_reliability``): per value where its answers were calibrated (its confusion counts, ``answer_confusion``),
else by its share of right answers to the question.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from retrieval.dialogue import Vocabulary, normalize_answer

logger = logging.getLogger(__name__)

# SearchEngine.answer_weight the CLI uses (it scales `evidence`): on the demo world's test split 0.1 to 0.5 give the
# same text Rank-1 and composed identity R@1 and 0.1 the better exact-target R@10 (benchmarks/answers.py; its val
# split favoured 0.1 with the base's own answers, 0.5 for composed search with its answers adapter)
ANSWER_WEIGHT = 0.1
# how sure an answer is for a question a base reports no accuracy for, and the bounds of any accuracy used
DEFAULT_RELIABILITY, RELIABILITY_BOUNDS = 0.9, (0.5, 0.98)
# beside a base: how it answers each true value of each bank question (``lineup bootstrap``'s last step)
CONFUSION_FILE = "answer_confusion.json"


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
             reliability: Mapping[str, float | Mapping[str, Mapping[str, float]]]) -> float:
    """How strongly one image's `answers` say it shows what is `stated`: the sum over the stated questions it was
    asked of the log-likelihood ratio of its answer (a naive-Bayes score; 0 when none was asked). Per question key
    ``reliability`` holds either the base's share of right answers p (90 % where absent): ± log(p / (1 − p)), + when
    the answer agrees, − when not; or a table stated value → answer → log-ratio (``confusion_log_odds``), which
    knows that a beanie answered "cap" is a common slip and a blue top answered "red" is not. A caption stating
    five attributes weighs more than a modification changing one. Without a vocabulary answers must match the
    stated words exactly."""
    total = 0.0
    for key in (k for k in stated if k in answers):
        rel = reliability.get(key, DEFAULT_RELIABILITY)
        said = vocabulary.canonical(key, answers[key]) if vocabulary is not None else answers[key]
        if isinstance(rel, Mapping):
            total += rel.get(stated[key], {}).get(said, 0.0)
            continue
        p = min(max(rel, RELIABILITY_BOUNDS[0]), RELIABILITY_BOUNDS[1])
        total += (1.0 if said == stated[key] else -1.0) * math.log(p / (1 - p))
    return total


def answer_confusion(answers: Mapping[str, Mapping[str, str]], truths: Mapping[str, Mapping[str, str]],
                     vocabulary: Vocabulary) -> dict[str, dict[str, dict[str, int]]]:
    """Per question key, true value → the MLLM's answer → how many images: ``answers`` and ``truths`` by image,
    both by question key, read as the vocabulary's canonical values; every value of the question has a row,
    counted or not."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for image, truth in truths.items():
        for key, value in truth.items():
            if key not in answers[image]:
                continue
            said = normalize_answer(answers[image][key])
            table = counts.setdefault(key, {v: {} for v in vocabulary.options.get(key, ())})
            row = table.setdefault(vocabulary.canonical(key, value) or value, {})
            said = vocabulary.canonical(key, said) or said
            row[said] = row.get(said, 0) + 1
    return counts


def confusion_log_odds(counts: Mapping[str, Mapping[str, int]], prior: float = 1.0) -> dict[str, dict[str, float]]:
    """One question's confusion counts (true value → answer → count) as stated value v → answer a →
    log P(a | v) / P(a | not v), each probability smoothed by ``prior`` pseudo-counts spread over the values seen
    and bounded like a 98 % sure answer."""
    values = sorted(set(counts) | {a for row in counts.values() for a in row})
    share, bound = prior / len(values), math.log(RELIABILITY_BOUNDS[1] / (1 - RELIABILITY_BOUNDS[1]))
    table: dict[str, dict[str, float]] = {}
    for v in values:
        row, others = counts.get(v, {}), [r for t, r in counts.items() if t != v]
        n_v, n_other = sum(row.values()), sum(sum(r.values()) for r in others)
        table[v] = {}
        for a in values:
            p = (row.get(a, 0) + share) / (n_v + prior)
            q = (sum(r.get(a, 0) for r in others) + share) / (n_other + prior)
            table[v][a] = min(max(math.log(p / q), -bound), bound)
    return table


def answer_reliability(embedder) -> dict[str, float | dict[str, dict[str, float]]]:
    """Per question key, how far the base's answers can be trusted (``evidence``): the log-ratio table of its
    confusion counts (``answer_confusion.json`` beside its weights, the last step of ``lineup bootstrap``), else
    the share of right answers it reported on its validation people (``stage0_done.json``, stage 0); empty for a
    base with neither (a hub checkpoint): every answer then counts as 90 % sure."""
    base = getattr(embedder, "base", None)
    out: dict[str, float | dict[str, dict[str, float]]] = {}
    for name, read in (("stage0_done.json", lambda d: d["val_vqa"]["by_attribute"]),
                       (CONFUSION_FILE, lambda d: {k: confusion_log_odds(c) for k, c in d["counts"].items()})):
        report = Path(base or "") / name
        if base and report.is_file():
            try:
                out.update(read(json.loads(report.read_text())))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning("%s: unreadable (%s: %s); the base's answers are weighed without it", report,
                               type(exc).__name__, exc)
    return out


def match_score(answers: Mapping[str, str], text: str, vocabulary: Vocabulary) -> float:
    """`agreement` with what `text` states (``Vocabulary.stated``)."""
    return agreement(answers, vocabulary.stated(text), vocabulary)


def world_vocabulary() -> Vocabulary:
    """The vocabulary of Lineup's question bank (``finetune.data.world``): its questions and answer words."""
    from finetune.data.world import ATTRIBUTES, QUESTION_BANK, VALUE_PHRASES, answer_from_attributes

    return Vocabulary.build(QUESTION_BANK, ATTRIBUTES, VALUE_PHRASES, answer_from_attributes)
