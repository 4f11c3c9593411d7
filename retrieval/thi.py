"""THI — test-time human-centred interaction: refine a text query over rounds, re-rank, undo.

One round loop, two modes (DESIGN.md "THI"; the ICL paper, research/anchors-t2i-reid.md):

``auto`` (the ICL paper's Algorithm 1, no user): round k shows the MLLM the k-th candidate of the base
ranking with ``embedder.config.match_question`` ("Can this text accurately describe the image? Text: {q}
Answer Yes or No."; stage 0 can train it: Stage0Config.match_pairs). Round 1 accepts
it as the anchor if Yes and S(q, v̂1) > ξ; round k > 1 accepts if every earlier round said No, this one
says Yes and the top-1 S(q, v̂1) ≤ ξ. The MLLM then answers the question bank about the anchor (the cached
answers in its payload when present), the answers are merged into the query by a template (q̂), and the
ranking becomes Ŝ = λ·S(q, v) + (1−λ)·S(q̂, v) with the anchor's score set to 1. At most K rounds.

``interactive`` (beyond the paper): answers to the bank are cached per gallery image at ingest
(``SearchEngine.cache_answers``). Each round picks the unasked question whose cached answers best split
the current top-K (entropy = expected information gain), asks an ``answerer`` (the user in the CLI, a
simulated user answering from ground truth, or the MLLM looking at the target), rewrites q̂ and re-ranks
by Ŝ = λ·S(q, v) + (1−λ)·S(q̂, v) + μ·agreement(v), agreement = share of the given answers that match
v's cached answers. One text embedding and one store query per round. ``undo()`` drops the last round.

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
from retrieval.engine import normalize_answer
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
    answer_weight: float = field(default=0.3, metadata={"help": "μ: interactive weight of cached-answer agreement"})
    split_k: int = field(default=10, metadata={"help": "interactive: top-K the next question should split"})
    pool: int = field(default=100, metadata={"help": "candidates fetched per (refined) query"})

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "interactive"):
            raise ValueError(f"mode must be 'auto' or 'interactive', got {self.mode!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        for name in ("rounds", "split_k", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def rewrite_query(query: str, answers: Sequence[tuple[dict[str, str], str]]) -> str:
    """Template merge of the query and question answers: 'q. upper color: red. has hat: no.'"""
    parts = [query.strip().rstrip(".")]
    parts += [f"{q['key'].replace('_', ' ')}: {a}" for q, a in answers]
    return ". ".join(parts) + "."


@dataclass
class Round:
    index: int
    ranking: list[Hit]
    refined_query: str
    question: dict[str, str] | None = None  # interactive: the question asked
    answer: str | None = None
    candidate: Hit | None = None  # auto: the candidate checked this round
    verdict: bool | None = None  # auto: the MLLM's yes/no on it
    anchor: str | None = None  # auto: point id of the accepted anchor


class THISession:
    """A THI dialogue over ``engine``'s collection for one text query.

    ``rounds[0]`` is the plain ranking; ``step()`` runs one round; ``undo()`` removes the last one.
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
        emb = engine.embedder
        self.vqa = vqa or (lambda image, question: emb.answer(image, question))
        self.judge = judge or (
            lambda image, q: normalize_answer(emb.answer(image, emb.config.match_prompt(q)))
            .startswith("yes")
        )
        self.q_vec = emb.encode_text([self.query])[0]
        self.ids: list[str] = []
        self.payloads: list[dict[str, Any]] = []
        self._vecs: list[np.ndarray] = []
        self._grow(self.q_vec)
        self.base = self.vectors @ self.q_vec
        self.rounds: list[Round] = [Round(0, self._rank(self.base), self.query)]

    # --- pool ----------------------------------------------------------------------------------------
    @property
    def vectors(self) -> np.ndarray:
        return self._mat

    def _grow(self, vector: np.ndarray) -> None:
        """Add the top ``pool`` hits of ``vector`` to the pool (vectors fetched only for new members)."""
        first = not self.ids
        hits = self.engine.search_vector(vector, self.config.pool, self.filter, with_vectors=first)
        if not hits and first:
            raise LineupError("the collection has no images matching the filter: index images or relax the filter")
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

    def _rank(self, scores: np.ndarray) -> list[Hit]:
        order = np.argsort(-scores, kind="stable")
        return [Hit(self.ids[i], float(scores[i]), self.payloads[i]) for i in order]

    # --- state ---------------------------------------------------------------------------------------
    @property
    def ranking(self) -> list[Hit]:
        return self.rounds[-1].ranking

    @property
    def answers(self) -> list[tuple[dict[str, str], str]]:
        return [(r.question, r.answer) for r in self.rounds if r.question is not None and r.answer is not None]

    @property
    def asked(self) -> set[str]:
        return {r.question["key"] for r in self.rounds if r.question is not None}

    @property
    def anchor(self) -> str | None:
        return next((r.anchor for r in self.rounds if r.anchor), None)

    @property
    def done(self) -> bool:
        if self.config.mode == "auto":
            return self.anchor is not None or len(self.rounds) > min(self.config.rounds, len(self.rounds[0].ranking))
        return len(self.rounds) > self.config.rounds or self.next_question() is None

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

    def _fused(self, refined: str) -> np.ndarray:
        """λ·S(q, v) + (1−λ)·S(q̂, v) over the pool, after growing it by q̂'s own top hits."""
        vec = self.engine.embedder.encode_text([refined])[0]
        self._grow(vec)
        vecs = self.vectors
        if len(self.base) < len(vecs):  # pool grew: extend S(q, ·) to the new members
            self.base = vecs @ self.q_vec
        lam = self.config.lam
        return lam * self.base + (1 - lam) * (vecs @ vec)

    def _auto_round(self) -> Round:
        k = len(self.rounds)  # 1-based index of the candidate checked this round
        base_ranking = self.rounds[0].ranking
        cand = base_ranking[k - 1]
        said_yes = bool(self.judge(cand.payload["image"], self.query))
        top1 = base_ranking[0].score
        earlier_no = all(r.verdict is False for r in self.rounds[1:])
        xi = self.config.xi
        accepted = said_yes and (cand.score > xi if k == 1 else (earlier_no and top1 <= xi))
        if not accepted:
            rnd = Round(k, self.ranking, self.rounds[-1].refined_query, candidate=cand, verdict=said_yes)
            self.rounds.append(rnd)
            return rnd
        cached = cand.payload.get("answers") or {}
        qa = [(q, normalize_answer(cached.get(q["key"]) or self.vqa(cand.payload["image"], q["question"])))
              for q in self.bank]
        refined = rewrite_query(self.query, [(q, a) for q, a in qa if a not in NO_ANSWER])
        scores = self._fused(refined)
        scores[self.ids.index(cand.id)] = max(1.0, float(scores.max()) + 1e-6)  # the anchor's S̄ = 1
        rnd = Round(k, self._rank(scores), refined, candidate=cand, verdict=True, anchor=cand.id)
        self.rounds.append(rnd)
        return rnd

    def next_question(self) -> dict[str, str] | None:
        """The unasked question whose cached answers split the current top-K most evenly (max entropy).

        Ties go to the wider top-3K split, then to the bank's order.
        """
        remaining = [q for q in self.bank if q["key"] not in self.asked]
        if not remaining:
            return None
        ranking = self.ranking

        def entropy(q: dict[str, str], n: int) -> float:
            counts = Counter((h.payload.get("answers") or {}).get(q["key"], "?") for h in ranking[:n])
            total = sum(counts.values())
            return -sum(c / total * math.log(c / total) for c in counts.values())

        k = self.config.split_k
        return max(remaining, key=lambda q: (round(entropy(q, k), 9), round(entropy(q, 3 * k), 9)))

    def answer(self, question: dict[str, str], answer: str | None) -> Round:
        """Apply the user's answer to ``question`` (None / 'skip' / "don't know" leave the ranking as is)."""
        if self.config.mode != "interactive":
            raise LineupError("answer() is for interactive THI; auto mode asks the MLLM itself (step())")
        index = len(self.rounds)
        norm = None if answer is None else normalize_answer(answer)
        if norm is None or norm in NO_ANSWER:
            rnd = Round(index, self.ranking, self.rounds[-1].refined_query, question=question, answer=None)
            self.rounds.append(rnd)
            return rnd
        given = self.answers + [(question, norm)]
        refined = rewrite_query(self.query, given)
        scores = self._fused(refined)
        scores = scores + self.config.answer_weight * np.array([agreement(p, given) for p in self.payloads])
        rnd = Round(index, self._rank(scores), refined, question=question, answer=norm)
        self.rounds.append(rnd)
        return rnd


def agreement(payload: dict[str, Any], given: Sequence[tuple[dict[str, str], str]]) -> float:
    """Share of the given answers that match the point's cached answers (0.5 for an uncached question)."""
    cached = payload.get("answers") or {}
    return sum(0.5 if q["key"] not in cached else float(cached[q["key"]] == a) for q, a in given) / len(given)


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
) -> list[dict[str, float]]:
    """Rank-1 / mAP per round and cumulative Hits@10 per round (ChatIR) over ``queries``.

    ``queries``: dicts with ``text`` and the target ``person_id``. ``answerer_for(query)`` gives the
    answerer of that query (interactive mode): a simulated user from ground truth, or the MLLM looking at
    the target image. The pool covers the whole (filtered) gallery so mAP is exact; a session that ends
    early keeps its last ranking in later rounds. Returns one dict per round 0..rounds.
    """
    from retrieval.metrics import rank_metrics

    config = config or THIConfig()
    if config.mode == "interactive" and answerer_for is None:
        raise LineupError("interactive THI evaluation needs answerer_for (e.g. a simulated user)")
    gallery = list(engine.store.scroll(engine.collection))
    if filter:
        gallery = [h for h in gallery if all(_match(h.payload.get(k), v) for k, v in filter.items())]
    column = {h.id: j for j, h in enumerate(gallery)}
    gallery_pids = np.array([h.payload.get("person_id", -1) for h in gallery])
    config = replace(config, pool=max(config.pool, len(gallery)))
    n_rounds = config.rounds
    sims = np.full((n_rounds + 1, len(queries), len(gallery)), -1e9, dtype=np.float64)
    for qi, query in enumerate(queries):
        session = THISession(engine, query["text"], question_bank, config, filter=filter)
        rounds = run_session(session, answerer_for(query) if answerer_for else None)
        for r in range(n_rounds + 1):
            for hit in rounds[min(r, len(rounds) - 1)].ranking:
                sims[r, qi, column[hit.id]] = hit.score
        if progress:
            progress(1)
    query_pids = np.array([q["person_id"] for q in queries])
    out, hit_so_far = [], np.zeros(len(queries), dtype=bool)
    for r in range(n_rounds + 1):
        m = rank_metrics(sims[r], query_pids, gallery_pids)
        top10 = np.argsort(-sims[r], axis=1, kind="stable")[:, :10]
        hit_so_far |= (gallery_pids[top10] == query_pids[:, None]).any(axis=1)
        out.append({"round": r, "R1": m["R1"], "mAP": m["mAP"], "Hits@10": float(100.0 * hit_so_far.mean())})
    return out


def _match(value: Any, wanted: Any) -> bool:
    return value in wanted if isinstance(wanted, (list, tuple, set)) else value == wanted
