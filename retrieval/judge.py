"""Yes/no judgements the MLLM reaches through its answers to the question bank.

The direct judges ask one question (``EmbedderConfig.match_question``: does this text describe the image?;
``verify_question``: are these two crops the same person?) and take the first word of the answer. A small MLLM
that answers "what colour is the top?" well can still fail to check a whole caption against an image in one
step. The answers judge asks the bank's short questions instead (or reads the answers cached at ingest) and
compares answers:

- ``match_score(answers, text)``: the share of what ``text`` states (``Vocabulary.parse``, closed under
  ``implied``) that the image's answers agree with;
- ``same_score(a, b)``: the share of bank questions two crops' answers agree on;
- composed search: ``agreement`` of a candidate's answers with what the modification says the wanted person
  has (``Vocabulary.modification``), added to the cosine by ``answer_weight``.

Both are graded in [0, 1], so a ROC curve has more than two points; a judge says yes at a threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from retrieval.dialogue import Vocabulary, normalize_answer

# SearchEngine.answer_weight the CLI uses: the best of 0.05–1.0 on the demo world's val split for text (0.2 and
# 0.3 tie on Rank-1, 0.3 has the higher mAP) and composed search (0.3); benchmarks/answers.py
ANSWER_WEIGHT = 0.3


def bank_answerer(embedder, vocabulary: Vocabulary | None = None) -> Callable[[Any, str], str]:
    """``answer(image, question)`` by the MLLM: a question of ``vocabulary``'s bank (default: the world's) gets
    one of its answer values, read from four views of the image (``MLLMEmbedder.answer(options=, views=True)``;
    the bank asks nothing a mirror image changes); any other question a free answer."""
    vocabulary = vocabulary or world_vocabulary()
    options = {q["question"]: list(vocabulary.options[q["key"]]) for q in vocabulary.bank}

    def answer(image, question: str) -> str:
        if question in options:
            return embedder.answer(image, question, options=options[question], views=True)
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


def match_score(answers: Mapping[str, str], text: str, vocabulary: Vocabulary) -> float:
    """`agreement` with what `text` states (``Vocabulary.stated``)."""
    return agreement(answers, vocabulary.stated(text), vocabulary)


def world_vocabulary() -> Vocabulary:
    """The vocabulary of Lineup's question bank (``finetune.data.world``): its questions and answer words."""
    from finetune.data.world import ATTRIBUTES, QUESTION_BANK, VALUE_PHRASES, answer_from_attributes

    return Vocabulary.build(QUESTION_BANK, ATTRIBUTES, VALUE_PHRASES, answer_from_attributes)
