"""THI — test-time human-centred interaction: refine a text query over rounds, re-rank, undo.

One round loop, two modes (DESIGN.md "THI"; the ICL paper, research/anchors-t2i-reid.md):

``auto`` (the ICL paper's Algorithm 1, no user): round k shows the MLLM the k-th candidate of the base
ranking and asks whether the query describes it. ``THIConfig.judge`` "question" asks that in one go
(``embedder.config.match_question``: "Can this text accurately describe the image? Text: {q} Answer Yes or No.";
stage 0 can train it: Stage0Config.match_pairs); "answers" (the default) compares the candidate's answers to
the question bank with what the query states (``retrieval.judge.match_score`` ≥ ``judge_threshold``; needs a
``vocabulary``). Round 1 accepts
it as the anchor if Yes and S(q, v̂1) > ξ; round k > 1 accepts if every earlier round said No, this one
says Yes and the top-1 S(q, v̂1) ≤ ξ. The MLLM then answers the question bank about the anchor (the cached
answers in its payload when present), the answers are merged into the query by a template (q̂), and the
ranking becomes Ŝ = λ·S(q, v) + (1−λ)·S(q̂, v) with the anchor's score set to 1. At most K rounds.

``interactive`` (beyond the paper): answers to the bank are cached per gallery image at ingest
(``SearchEngine.cache_answers``). Each round picks the unasked question whose cached answers best split
the current top-K (entropy = expected information gain), asks an ``answerer`` (the user in the CLI, a
simulated user answering from ground truth, or the MLLM looking at the target), rewrites q̂ and re-ranks
by Ŝ = λ·S(q, v) + (1−λ)·S(q̂, v) + μ·evidence(v): ``retrieval.judge.evidence`` of v's cached answers for
everything known of the wanted person (the answers and, listening, what the description says; each answer
weighed by how often the base answers that question right), the score the engine's answer re-ranking adds to
a text search. One text embedding and one store query per round. ``undo()`` drops the last round.

Scores are computed over a candidate pool: the top ``pool`` hits of q, grown by the top ``pool`` hits
of every q̂ (vectors come back from the store, so S(q, ·) and S(q̂, ·) are exact on the pool).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from mllm_embed.errors import LineupError
from retrieval.dialogue import AnswerFilter, Vocabulary, merge_filters, normalize_answer
from retrieval.judge import agreement as stated_agreement
from retrieval.judge import ANSWER_WEIGHT, bank_answerer, bank_answers, evidence
from retrieval.store import Hit

log = logging.getLogger(__name__)

NO_ANSWER = {"", "skip", "unknown", "don't know", "dont know", "not sure", "?"}

Answerer = Callable[[dict[str, str]], "str | None"]  # question {"key","question"} -> answer (None = skip)
Judge = Callable[[str, str], bool]  # (image path, query) -> does the text describe the image?
VQA = Callable[[str, str], str]  # (image path, question) -> short answer


@dataclass
class THIConfig:
    mode: str = field(default="interactive", metadata={"help": "'auto' (ICL paper) or 'interactive'"})
    rounds: int = field(default=5, metadata={"help": "auto: candidates checked (K); interactive: questions"})
    lam: float = field(default=0.8, metadata={"help": "λ: weight of the original query's score"})
    xi: float = field(default=0.5, metadata={"help": "ξ: auto-mode similarity gate for the anchor"})
    judge: str = field(default="answers", metadata={
        "help": "auto: 'answers' (the candidate's answers to the question bank against what the query states) "
                "or 'question' (the MLLM's yes/no to match_question)"})
    judge_threshold: float = field(default=0.8, metadata={
        "help": "auto, judge 'answers': share of the query's stated answers a candidate must agree with"})
    answer_weight: float = field(default=ANSWER_WEIGHT, metadata={
        "help": "μ: interactive weight of the cached answers' evidence (the engine's answer re-ranking weight)"})
    split_k: int = field(default=10, metadata={"help": "interactive: top-K the next question should split"})
    pool: int = field(default=100, metadata={"help": "candidates fetched per (refined) query"})
    feedback_weight: float = field(default=0.3, metadata={"help": "ν: weight of relevance feedback (interactive)"})
    feedback_strategy: str = field(default="sum_scores", metadata={
        "help": "Qdrant query that scores feedback: best_score, sum_scores, context, discover or naive"})
    listen: bool = field(default=True, metadata={
        "help": "interactive: never ask a question the description or an earlier answer already answers"})

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "interactive"):
            raise ValueError(f"mode must be 'auto' or 'interactive', got {self.mode!r}")
        if self.judge not in ("answers", "question"):
            raise ValueError(f"judge must be 'answers' or 'question', got {self.judge!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        from retrieval.store import FEEDBACK_STRATEGIES

        if self.feedback_strategy not in FEEDBACK_STRATEGIES:
            raise ValueError(f"feedback_strategy must be one of {', '.join(FEEDBACK_STRATEGIES)}, "
                             f"got {self.feedback_strategy!r}")
        if self.feedback_weight < 0 or self.answer_weight < 0:
            raise ValueError("answer_weight and feedback_weight must be >= 0")
        for name in ("rounds", "split_k", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def rewrite_query(query: str, answers: Sequence[tuple[dict[str, str], str]]) -> str:
    """Template merge of the query and question answers: 'q. upper color: red. has hat: no.'"""
    parts = [query.strip().rstrip(".")]
    parts += [f"{q['key'].replace('_', ' ')}: {a}" for q, a in answers]
    return ". ".join(parts) + "."


@dataclass(frozen=True)
class Asked:
    """Interactive: the question asked and the user's normalised answer (None: skipped)."""

    question: dict[str, str]
    answer: str | None


@dataclass(frozen=True)
class Marked:
    """Interactive: like / unlike feedback (the marks so far are the round's positives and negatives)."""


@dataclass(frozen=True)
class Filtered:
    """Interactive: a payload filter added or dropped (the filters in force are the round's filters)."""


@dataclass(frozen=True)
class Checked:
    """Auto: the candidate the MLLM judged this round, its yes/no, and whether it became the anchor."""

    candidate: Hit
    verdict: bool
    accepted: bool = False


@dataclass
class Round:
    """One step of a session: what happened (None for round 0), the ranking after it, and the interactive
    state in force after it (marked point ids, filters), so `undo()` restores any step alike."""

    index: int
    ranking: list[Hit]
    refined_query: str
    action: Asked | Marked | Filtered | Checked | None = None
    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    filters: tuple[AnswerFilter, ...] = ()


class THISession:
    """A THI dialogue over ``engine``'s collection for one text query.

    ``step()`` runs one round; ``undo()`` removes the last one. Interactive sessions also take relevance
    feedback (``feedback``) and payload filters (``add_filter`` / ``drop_filter``), each one round, so ``undo``
    treats every step alike. With a ``vocabulary`` (default: the engine's) the session listens: a question the
    description or an earlier answer already answers is never asked, and what the description says counts as
    answers (``known``).

    Interactive scores: Ŝ = λ·S(q, v) + (1−λ)·S(q̂, v) + μ·evidence(v) + ν·feedback(v), the q̂ term once an
    answer is given, the evidence term once something is known (so a listening session's ``rounds[0]`` is the
    engine's re-ranked text search; a deaf one's, the plain cosine ranking; auto mode's, always the plain one) and
    ν once feedback is;
    feedback(v) ∈ [0, 1] is the Qdrant feedback query's score min–max scaled over the pool, run once a positive
    is given (with the negatives as its negative examples). A point marked unlike is not the person: it goes
    below every other.
    """

    def __init__(
        self,
        engine: Any,
        query: str,
        question_bank: Sequence[dict[str, str]],
        config: THIConfig | None = None,
        filter: dict[str, Any] | None = None,
        judge: Judge | None = None,
        vqa: VQA | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        if not query or not query.strip():
            raise LineupError("empty query: describe the person to start a THI session")
        if not question_bank:
            raise LineupError("THI needs a question bank (e.g. finetune.data.world.QUESTION_BANK)")
        self.engine = engine
        self.query = query.strip()
        self.bank = list(question_bank)
        self.config = config or THIConfig()
        self.filter = filter
        self.vocabulary = vocabulary = vocabulary if vocabulary is not None else getattr(engine, "vocabulary", None)
        self.stated = vocabulary.parse(self.query) if vocabulary is not None else {}
        emb = engine.embedder
        self.vqa = vqa or bank_answerer(emb, vocabulary)
        if judge is None and self.config.judge == "question":
            def judge(image, q):
                return normalize_answer(emb.answer(image, emb.config.match_prompt(q))).startswith("yes")
        if judge is None and self.config.mode == "auto" and vocabulary is None:
            raise LineupError("THI auto's answers judge reads the query with a Vocabulary: pass vocabulary= "
                              "(retrieval.dialogue.Vocabulary.build) or use THIConfig(judge='question')")
        self.judge = judge  # None: the answers judge
        self.q_vec = emb.encode_text([self.query])[0]
        self._text_vecs: dict[str, np.ndarray] = {self.query: self.q_vec}
        self.ids: list[str] = []
        self.payloads: list[dict[str, Any]] = []
        self._vecs: list[np.ndarray] = []
        self._grow(self.q_vec)
        self.base = self.vectors @ self.q_vec
        self.rounds: list[Round] = []
        if self.config.mode == "auto":  # the ICL paper's base ranking: the plain text search
            self.rounds.append(Round(0, self._rank(self.base), self.query))
        else:
            self._push(Round(0, [], self.query), [])

    # --- pool ----------------------------------------------------------------------------------------
    @property
    def vectors(self) -> np.ndarray:
        return self._mat

    def _grow(self, vector: np.ndarray | None, filter: dict[str, Any] | None = None,
              hits: list[Hit] | None = None) -> None:
        """Add the top ``pool`` hits of ``vector`` (or the given ``hits``) to the pool (vectors fetched only
        for new members)."""
        first = not self.ids
        if not first and self._complete:
            return
        if hits is None:
            hits = self.engine.search_vector(vector, self.config.pool, filter or self.filter, with_vectors=first)
        if not hits and first:
            raise LineupError("the collection has no images matching the filter: index images or relax the filter")
        if first:  # the pool already holds every point the session can show: it never needs to grow
            self._complete = len(hits) < self.config.pool or (
                len(hits) == self.engine.store.count(self.engine.collection, self.filter))
        known = set(self.ids)
        new = [h for h in hits if h.id not in known]
        if new and not first:
            new = self.engine.store.retrieve(self.engine.collection, [h.id for h in new], with_vectors=True)
        for h in new:
            self.ids.append(h.id)
            self.payloads.append(h.payload)
            self._vecs.append(h.vector)
        if new or first:
            self._mat = np.stack(self._vecs)
            self._index = {i: j for j, i in enumerate(self.ids)}
        if len(self.base if hasattr(self, "base") else ()) < len(self.ids):
            self.base = self._mat @ self.q_vec

    def _rank(self, scores: np.ndarray, keep: np.ndarray | None = None) -> list[Hit]:
        order = np.argsort(-scores, kind="stable")
        return [Hit(self.ids[i], float(scores[i]), self.payloads[i]) for i in order if keep is None or keep[i]]

    # --- state ---------------------------------------------------------------------------------------
    @property
    def ranking(self) -> list[Hit]:
        return self.rounds[-1].ranking

    @property
    def answers(self) -> list[tuple[dict[str, str], str]]:
        return [(r.action.question, r.action.answer) for r in self.rounds
                if isinstance(r.action, Asked) and r.action.answer is not None]

    @property
    def asked(self) -> set[str]:
        return {r.action.question["key"] for r in self.rounds if isinstance(r.action, Asked)}

    @property
    def known(self) -> dict[str, str]:
        """What the description and the answers so far say (closed under the bank's relations): the
        questions a listening session does not ask."""
        if self.vocabulary is None or not self.config.listen:
            return {}
        return self._known(self.answers)

    def _known(self, given: Sequence[tuple[dict[str, str], str]]) -> dict[str, str]:
        """What is known of the wanted person after the answers ``given``: they and, listening, what the
        description says (closed under the bank's relations; without a vocabulary the answers as given)."""
        said = {q["key"]: a for q, a in given}
        if self.vocabulary is None:
            return said
        heard = self.stated if self.config.listen else {}
        return self.vocabulary.implied({**heard, **said})

    @property
    def positives(self) -> tuple[str, ...]:
        return self.rounds[-1].positives

    @property
    def negatives(self) -> tuple[str, ...]:
        return self.rounds[-1].negatives

    @property
    def filters(self) -> tuple[AnswerFilter, ...]:
        return self.rounds[-1].filters

    @property
    def active_filter(self) -> dict[str, Any] | None:
        """The session's base filter merged with the user's answer filters."""
        return merge_filters(self.filter, self.filters)

    @property
    def anchor(self) -> str | None:
        return next((r.action.candidate.id for r in self.rounds if isinstance(r.action, Checked) and r.action.accepted),
                    None)

    @property
    def done(self) -> bool:
        if self.config.mode == "auto":
            return self.anchor is not None or len(self.rounds) > min(self.config.rounds, len(self.rounds[0].ranking))
        return len(self.asked) >= self.config.rounds or self.next_question() is None

    def undo(self) -> Round:
        """Drop the last round (never round 0); returns the round now current."""
        if len(self.rounds) > 1:
            self.rounds.pop()
        return self.rounds[-1]

    # --- one round -----------------------------------------------------------------------------------
    def step(self, answerer: Answerer | None = None) -> Round:
        if self.done:
            return self.rounds[-1]
        if self.config.mode == "auto":
            return self._auto_round()
        if answerer is None:
            raise LineupError("interactive THI needs an answerer (the user, or a simulated one)")
        question = self.next_question()
        return self.answer(question, answerer(question))

    def _text_vec(self, text: str) -> np.ndarray:
        if text not in self._text_vecs:
            self._text_vecs[text] = self.engine.embedder.encode_text([text])[0]
        return self._text_vecs[text]

    def _fused(self, refined: str) -> np.ndarray:
        """λ·S(q, v) + (1−λ)·S(q̂, v) over the pool, after growing it by q̂'s own top hits."""
        vec = self._text_vec(refined)
        self._grow(vec)
        lam = self.config.lam
        return lam * self.base + (1 - lam) * (self.vectors @ vec)

    def _candidate_answers(self, cand: Hit) -> dict[str, str]:
        """The candidate's answers to the bank: cached in its payload, else asked now."""
        return bank_answers(self.vqa, cand.payload["image"], self.bank, cand.payload.get("answers"))

    def _auto_round(self) -> Round:
        k = len(self.rounds)  # 1-based index of the candidate checked this round
        base_ranking = self.rounds[0].ranking
        cand = base_ranking[k - 1]
        if self.judge is None:
            answers = self._candidate_answers(cand)
            stated = self.vocabulary.implied(self.stated)  # match_score's reading, without parsing again
            said_yes = stated_agreement(answers, stated, self.vocabulary) >= self.config.judge_threshold
        else:
            answers, said_yes = None, bool(self.judge(cand.payload["image"], self.query))
        top1 = base_ranking[0].score
        earlier_no = not any(r.action.verdict for r in self.rounds[1:])
        xi = self.config.xi
        accepted = said_yes and (cand.score > xi if k == 1 else (earlier_no and top1 <= xi))
        if not accepted:
            rnd = Round(k, self.ranking, self.rounds[-1].refined_query, Checked(cand, said_yes))
            self.rounds.append(rnd)
            return rnd
        answers = answers or self._candidate_answers(cand)
        qa = [(q, answers[q["key"]]) for q in self.bank]
        refined = rewrite_query(self.query, [(q, a) for q, a in qa if a not in NO_ANSWER])
        scores = self._fused(refined)
        scores[self.ids.index(cand.id)] = max(1.0, float(scores.max()) + 1e-6)  # the anchor's S̄ = 1
        rnd = Round(k, self._rank(scores), refined, Checked(cand, True, accepted=True))
        self.rounds.append(rnd)
        return rnd

    def next_question(self) -> dict[str, str] | None:
        """The unasked, not yet known question whose cached answers split the current top-K most evenly
        (max entropy). Ties go to the wider top-3K split, then to the bank's order."""
        skip = self.asked | set(self.known)
        remaining = [q for q in self.bank if q["key"] not in skip]
        if not remaining:
            return None
        ranking = self.ranking

        def entropy(q: dict[str, str], n: int) -> float:
            counts = Counter((h.payload.get("answers") or {}).get(q["key"], "?") for h in ranking[:n])
            total = sum(counts.values())
            return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0

        k = self.config.split_k
        return max(remaining, key=lambda q: (round(entropy(q, k), 9), round(entropy(q, 3 * k), 9)))

    def answer(self, question: dict[str, str], answer: str | None) -> Round:
        """Apply the user's answer to ``question`` (None / 'skip' / "don't know" leave the ranking as is)."""
        self._interactive("answer()")
        norm = None if answer is None else normalize_answer(answer)
        if norm is None or norm in NO_ANSWER:
            norm = None
        given = self.answers + ([(question, norm)] if norm is not None else [])
        return self._push(Round(len(self.rounds), [], "", Asked(question, norm), self.positives, self.negatives,
                                self.filters), given)

    def feedback(self, positives: Sequence[str] = (), negatives: Sequence[str] = ()) -> Round:
        """Mark pool points (ids) as like / unlike the wanted person; re-ranks with the Qdrant feedback query
        (``config.feedback_strategy``) fused with the running text query. A point marked again moves sides."""
        self._interactive("feedback()")
        unknown = [i for i in (*positives, *negatives) if i not in self._index]
        if unknown:
            raise LineupError(f"feedback on {len(unknown)} point(s) that are not among the candidates shown")
        pos = tuple(dict.fromkeys([p for p in self.positives if p not in negatives] + list(positives)))
        neg = tuple(dict.fromkeys([n for n in self.negatives if n not in positives] + list(negatives)))
        rnd = Round(len(self.rounds), [], "", Marked(), pos, neg, self.filters)
        return self._push(rnd, self.answers)

    def add_filter(self, f: AnswerFilter) -> Round:
        """Keep only points whose payload matches ``f`` (e.g. cached answer bag = backpack)."""
        self._interactive("add_filter()")
        filters = tuple(x for x in self.filters if x.conditions.keys() != f.conditions.keys()) + (f,)
        rnd = Round(len(self.rounds), [], "", Filtered(), self.positives, self.negatives, filters)
        return self._push(rnd, self.answers)

    def drop_filter(self, words: Sequence[str]) -> Round:
        """Remove the filters ``words`` name ("backpack"); every filter when ``words`` is empty."""
        self._interactive("drop_filter()")
        kept = tuple(f for f in self.filters if words and not f.matches(words))
        if len(kept) == len(self.filters):
            active = ", ".join(f.label for f in self.filters) or "none"
            raise LineupError(f"no active filter matches '{' '.join(words)}' (active: {active})")
        rnd = Round(len(self.rounds), [], "", Filtered(), self.positives, self.negatives, kept)
        return self._push(rnd, self.answers)

    def _interactive(self, what: str) -> None:
        if self.config.mode != "interactive":
            raise LineupError(f"{what} is for interactive THI; auto mode asks the MLLM itself (step())")

    def _push(self, rnd: Round, given: list[tuple[dict[str, str], str]]) -> Round:
        """Score the pool for the state ``rnd`` describes (answers ``given``, its feedback and filters)."""
        cfg = self.config
        flt = merge_filters(self.filter, rnd.filters)
        refined = rewrite_query(self.query, given) if given else self.query
        text_vec = self._text_vec(refined)
        if rnd.filters:
            self._grow(self.q_vec, flt)
        self._grow(text_vec, flt)
        fb = None
        if rnd.positives:  # negatives alone only drop their own images (below): pushing the ranking away
            fb = self._feedback_scores(rnd.positives, rnd.negatives, text_vec, flt)  # from a look-alike hurts
        vecs = self.vectors
        scores = cfg.lam * self.base + (1 - cfg.lam) * (vecs @ text_vec) if given else self.base.copy()
        known = self._known(given)
        if known and cfg.answer_weight:
            sure = self.engine.reliability
            scores += cfg.answer_weight * np.array([evidence(p.get("answers") or {}, known, self.vocabulary, sure)
                                                    for p in self.payloads])
        if fb is not None:
            scores += cfg.feedback_weight * fb
        if rnd.negatives:  # "not #4": that image is not the person; it goes to the bottom
            scores[[self._index[point] for point in rnd.negatives]] = scores.min() - 1.0
        keep = None
        if flt:
            keep = np.array([all(_match(_get(p, k), v) for k, v in flt.items()) for p in self.payloads])
        rnd.refined_query = refined
        rnd.ranking = self._rank(scores, keep)
        self.rounds.append(rnd)
        return rnd

    def _feedback_scores(self, pos: Sequence[str], neg: Sequence[str], target: np.ndarray,
                         flt: dict[str, Any] | None) -> np.ndarray:
        """The feedback query's scores over the pool, min–max scaled to [0, 1] (after growing the pool by its
        own top hits). A strategy that needs both sides falls back to ``sum_scores`` with one side only."""
        store, name = self.engine.store, self.engine.collection
        strategy = self.config.feedback_strategy
        if strategy in ("context", "discover", "naive") and not (pos and neg):
            strategy = "sum_scores"
        P = np.stack([self._vecs[self._index[i]] for i in pos]) if pos else np.zeros((0, len(target)))
        N = np.stack([self._vecs[self._index[i]] for i in neg]) if neg else np.zeros((0, len(target)))
        if not self._complete:
            self._grow(None, hits=store.feedback_search(name, strategy, P, N, self.config.pool, flt, target))
        hits = store.feedback_search(name, strategy, P, N, len(self.ids), flt, target,
                                     ids=None if self._complete else self.ids, with_payload=False)
        raw = np.full(len(self.ids), np.nan)
        for h in hits:
            raw[self._index[h.id]] = h.score
        if np.isnan(raw).all():
            return np.zeros(len(self.ids))
        lo, hi = np.nanmin(raw), np.nanmax(raw)
        out = (raw - lo) / (hi - lo) if hi > lo else np.ones_like(raw)
        return np.nan_to_num(out, nan=0.0)


def run_session(session: THISession, answerer: Answerer | None = None) -> list[Round]:
    """Run rounds until the session is done; returns every round (round 0 first)."""
    while not session.done:
        before = len(session.rounds)
        session.step(answerer)
        if len(session.rounds) == before:
            break
    return session.rounds


def evaluate_thi(
    engine: Any,
    queries: Sequence[dict[str, Any]],
    question_bank: Sequence[dict[str, str]],
    config: THIConfig | None = None,
    answerer_for: Callable[[dict[str, Any]], Answerer] | None = None,
    filter: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    vocabulary: Vocabulary | None = None,
) -> list[dict[str, float]]:
    """Rank-1 / mAP per round and cumulative Hits@10 per round (ChatIR) over ``queries``: the questions-only
    dialogue of ``evaluate_dialogue`` (its ``rounds``)."""
    return evaluate_dialogue(engine, queries, question_bank, config, answerer_for, filter=filter,
                             progress=progress, vocabulary=vocabulary)["rounds"]


VARIANTS = ("questions", "feedback", "filters")


def simulated_feedback(ranking: Sequence[Hit], person_id: Any, shown: int = 5,
                       marked: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """What a user looking for ``person_id`` says about the ``shown`` top candidates: its person's images are
    positives, the images of the most confusable shown person (the best-ranked other one) negatives.
    Points already ``marked`` are not marked again."""
    top = [h for h in ranking[:shown] if h.id not in marked]
    pos = [h.id for h in top if h.payload.get("person_id") == person_id]
    other = next((h.payload.get("person_id") for h in top if h.payload.get("person_id") != person_id), None)
    neg = [h.id for h in top if other is not None and h.payload.get("person_id") == other]
    return pos, neg


_UNRANKED = -1e9  # evaluate_dialogue's score of a gallery point a round's ranking does not hold


def simulated_filter(ranking: Sequence[Hit], truth: dict[str, str], seen: Callable[[Hit], dict[str, str]],
                     active: Sequence[AnswerFilter], bank: Sequence[dict[str, str]], shown: int = 10
                     ) -> AnswerFilter | None:
    """The filter a user adds after looking at the ``shown`` candidates: on the question whose true answer for
    its person (``truth``) rules out most of them (``seen(hit)``: what the user sees in a candidate), keeping
    the points whose cached answer agrees. None when no filter would rule any out."""
    used = {k for f in active for k in f.conditions}
    best, best_n = None, 0
    for q in bank:
        key = q["key"]
        if f"answers.{key}" in used or key not in truth:
            continue
        n = sum(seen(h).get(key) not in (None, truth[key]) for h in ranking[:shown])
        if n > best_n:
            best, best_n = key, n
    if best is None:
        return None
    return AnswerFilter(f"{best.replace('_', ' ')} {truth[best]}", {f"answers.{best}": truth[best]})


def evaluate_dialogue(
    engine: Any,
    queries: Sequence[dict[str, Any]],
    question_bank: Sequence[dict[str, str]],
    config: THIConfig | None = None,
    answerer_for: Callable[[dict[str, Any]], Answerer] | None = None,
    variant: str = "questions",
    vocabulary: Vocabulary | None = None,
    shown: int = 5,
    seen: Callable[[Hit], dict[str, str]] | None = None,
    filter: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """A simulated user's whole dialogue, per round: Rank-1, mAP and cumulative Hits@10 (ChatIR).

    ``queries``: dicts with ``text``, the target ``person_id`` and (variant "filters") ``answers``, the true
    answer per question key. Each round the user answers the next question (``answerer_for(query)``, interactive
    mode); variant "feedback" also marks the ``shown`` top candidates (``simulated_feedback``), "filters" also
    adds one filter from its true answers (``simulated_filter``; ``seen(hit)`` = the true answers of a shown
    candidate, default its cached ones). Rounds run ``config.rounds`` times even when questions run out.
    The pool covers the whole (filtered) gallery so mAP is exact; the points a filter leaves out rank last.

    Returns ``{"rounds": [{"round", "R1", "mAP", "Hits@10"}, ...], "questions_asked", "questions_redundant",
    "queries", "misses"}``: redundant = asked although the description (or an earlier answer) already gave the
    answer (needs ``vocabulary``; 0 when the session listens); misses (variant "questions", with ``vocabulary``) =
    the queries that end with another person on top, each with what is known that the top hit truly differs in and
    which known answers the cache has wrong for it and for the wanted person (``_miss``).
    """
    from retrieval.metrics import rank_metrics

    config = config or THIConfig()
    if variant not in VARIANTS:
        raise LineupError(f"unknown dialogue variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if config.mode == "interactive" and answerer_for is None:
        raise LineupError("interactive THI evaluation needs answerer_for (e.g. a simulated user)")
    if variant != "questions" and config.mode != "interactive":
        raise LineupError("feedback and filters are interactive: use THIConfig(mode='interactive')")
    seen = seen or (lambda hit: hit.payload.get("answers") or {})
    gallery = list(engine.store.scroll(engine.collection))
    if filter:
        gallery = [h for h in gallery if all(_match(_get(h.payload, k), v) for k, v in filter.items())]
    column = {h.id: j for j, h in enumerate(gallery)}
    gallery_pids = np.array([h.payload.get("person_id", -1) for h in gallery])
    config = replace(config, pool=max(config.pool, len(gallery)))
    n_rounds = config.rounds
    sims = np.full((n_rounds + 1, len(queries), len(gallery)), _UNRANKED, dtype=np.float64)
    asked = redundant = 0
    misses: list[dict[str, Any]] = []
    for qi, query in enumerate(queries):
        session = THISession(engine, query["text"], question_bank, config, filter=filter, vocabulary=vocabulary)
        if config.mode == "auto":
            rankings = [r.ranking for r in run_session(session)]
        else:
            answerer = answerer_for(query)
            rankings = [session.ranking]
            for _ in range(n_rounds):
                before = session.ranking
                question = session.next_question() if len(session.asked) < n_rounds else None
                if question is not None:
                    session.answer(question, answerer(question))
                if variant in ("feedback", "filters"):
                    pos, neg = simulated_feedback(before, query["person_id"], shown,
                                                  session.positives + session.negatives)
                    if pos or neg:
                        session.feedback(pos, neg)
                if variant == "filters":
                    f = simulated_filter(before, query.get("answers") or {}, seen, session.filters, question_bank)
                    if f is not None:
                        session.add_filter(f)
                rankings.append(session.ranking)
            stated = vocabulary.stated(query["text"]) if vocabulary is not None else {}
            asked += len(session.asked)
            redundant += len(session.asked & set(stated))
            if (variant == "questions" and vocabulary is not None
                    and session.ranking[0].payload.get("person_id") != query["person_id"]):
                misses.append(_miss(session, query, seen, vocabulary))
        for r in range(n_rounds + 1):
            for hit in rankings[min(r, len(rankings) - 1)]:
                sims[r, qi, column[hit.id]] = hit.score
        if progress:
            progress(1)
    query_pids = np.array([q["person_id"] for q in queries])
    # what a filtered ranking left out ranks below all it returned, the wanted person's images last: the user never
    # sees them, and the store's order of the left-out points decides nothing
    sims[(sims == _UNRANKED) & (gallery_pids[None, :] == query_pids[:, None])[None]] = 2 * _UNRANKED
    out, hit_so_far = [], np.zeros(len(queries), dtype=bool)
    for r in range(n_rounds + 1):
        m = rank_metrics(sims[r], query_pids, gallery_pids)
        top10 = np.argsort(-sims[r], axis=1, kind="stable")[:, :10]
        hit_so_far |= (gallery_pids[top10] == query_pids[:, None]).any(axis=1)
        out.append({"round": r, "R1": m["R1"], "mAP": m["mAP"], "Hits@10": float(100.0 * hit_so_far.mean())})
    return {"rounds": out, "questions_asked": asked, "questions_redundant": redundant, "queries": len(queries),
            "misses": misses}


def _miss(session: THISession, query: dict[str, Any], seen: Callable[[Hit], dict[str, str]],
          vocabulary: Vocabulary) -> dict[str, Any]:
    """Why an interactive session ended with another person on top: what is known of the wanted person that the
    top hit truly differs in (``seen``: a hit's true answers) and that the cached answers got wrong for either."""
    known = session._known(session.answers)
    top = session.ranking[0]
    rank = next((i for i, h in enumerate(session.ranking, 1) if h.payload.get("person_id") == query["person_id"]), None)
    target = None if rank is None else session.ranking[rank - 1]

    def cached(hit: Hit, key: str) -> str | None:
        return vocabulary.canonical(key, (hit.payload.get("answers") or {}).get(key) or "")

    truth = seen(top)
    return {"text": query["text"], "person_id": query["person_id"], "top": top.payload.get("image"),
            "rank": rank,
            "asked": sorted(session.asked),
            "top_differs": sorted(k for k, v in known.items() if k in truth and truth[k] != v),
            "top_cached_wrong": sorted(k for k, v in known.items() if k in truth and cached(top, k) != truth[k]),
            "target_cached_wrong": [] if target is None else sorted(k for k, v in known.items()
                                                                     if cached(target, k) != v)}


def _get(payload: dict[str, Any], key: str) -> Any:
    """A payload value by dotted key ("answers.bag"), as Qdrant reads nested fields."""
    value: Any = payload
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _match(value: Any, wanted: Any) -> bool:
    return value in wanted if isinstance(wanted, (list, tuple, set)) else value == wanted
