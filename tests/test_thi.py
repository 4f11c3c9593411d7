"""THI: the interactive loop lifts Rank-1 with a simulated user; auto mode follows the ICL anchor rule."""

from __future__ import annotations

import numpy as np
import pytest
from _retrieval_fakes import BANK, FakeEmbedder, caption, make_gallery

from mllm_embed.errors import LineupError
from retrieval.engine import SearchEngine
from retrieval.metrics import rank_metrics
from retrieval.store import open_store
from retrieval.thi import THIConfig, THISession, evaluate_thi, rewrite_query, run_session


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    records, attrs = make_gallery(tmp_path_factory.mktemp("thi") / "imgs", identities=30, per_id=2, seed=3)
    emb = FakeEmbedder(attrs, noise=0.02)
    engine = SearchEngine(emb, open_store(url=":memory:"), "g")
    engine.index_images(records)
    engine.cache_answers(BANK)  # the fake "MLLM" answers from the person's attributes
    by_pid = {r["person_id"]: r["attributes"] for r in records}
    # vague queries: only gender + top colour, so several people tie at round 0
    queries = [{"text": caption(a, ["gender", "upper_color"]), "person_id": pid, "attributes": a}
               for pid, a in sorted(by_pid.items())]
    return engine, queries


def simulated_user(query):
    return lambda question: query["attributes"][question["key"]]


def test_interactive_rounds_improve_rank1_and_undo(world):
    engine, queries = world
    result = evaluate_thi(engine, queries, BANK, THIConfig(mode="interactive", rounds=3),
                          answerer_for=simulated_user)
    assert [r["round"] for r in result] == [0, 1, 2, 3]
    assert result[3]["R1"] >= result[0]["R1"] + 30  # vague query → nearly always right after 3 answers
    assert result[3]["mAP"] > result[0]["mAP"]
    hits = [r["Hits@10"] for r in result]
    assert hits == sorted(hits)  # cumulative

    # round 0 is exactly the metric on the plain text-search similarity matrix
    gallery = list(engine.store.scroll("g", with_vectors=True))
    sim = engine.embedder.encode_text([q["text"] for q in queries]) @ np.stack([h.vector for h in gallery]).T
    plain = rank_metrics(sim, [q["person_id"] for q in queries], [h.payload["person_id"] for h in gallery])
    assert result[0]["R1"] == pytest.approx(plain["R1"]) and result[0]["mAP"] == pytest.approx(plain["mAP"], abs=1e-6)


def test_session_questions_split_candidates_and_undo(world):
    engine, queries = world
    q = queries[4]
    session = THISession(engine, q["text"], BANK, THIConfig(rounds=4))
    first = session.next_question()
    top = [h.payload["answers"] for h in session.ranking[:10]]
    split = {b["key"]: len({a[b["key"]] for a in top}) for b in BANK}
    assert split[first["key"]] == max(split.values()) > 1  # it splits the top-K; unanimous keys never win
    r1 = session.step(simulated_user(q))
    assert r1.question == first and r1.answer == q["attributes"][first["key"]]
    assert q["attributes"][first["key"]] in r1.refined_query
    assert session.next_question()["key"] != first["key"]
    session.step(simulated_user(q))
    assert len(session.rounds) == 3
    session.undo()
    assert len(session.rounds) == 2 and session.ranking == r1.ranking
    session.undo()
    session.undo()  # never below round 0
    assert len(session.rounds) == 1
    skipped = session.answer(first, "don't know")
    assert skipped.answer is None and skipped.ranking == session.rounds[0].ranking
    run_session(session, simulated_user(q))
    assert session.done and session.ranking[0].payload["person_id"] == q["person_id"]


def _scripted(verdicts):
    seen = []

    def judge(image, query):
        seen.append(image)
        return verdicts[len(seen) - 1]

    return judge, seen


def test_auto_mode_anchor_rule(world):
    engine, queries = world
    q = queries[0]["text"]
    base = THISession(engine, q, BANK, THIConfig(mode="auto")).ranking
    top1 = base[0].score

    # top-1 is confident (S > ξ) and the MLLM says Yes: it becomes the anchor at round 1
    judge, seen = _scripted([True])
    s = THISession(engine, q, BANK, THIConfig(mode="auto", xi=top1 - 0.01), judge=judge)
    run_session(s)
    assert len(s.rounds) == 2 and s.anchor == base[0].id and s.ranking[0].id == base[0].id
    assert s.ranking[0].score == pytest.approx(1.0, abs=1e-5)
    anchor_attrs = base[0].payload["answers"]
    assert all(v in s.rounds[1].refined_query for v in anchor_attrs.values())

    # top-1 not confident (S ≤ ξ): No, No, Yes → the third candidate is the anchor and ranks first
    judge, seen = _scripted([False, False, True])
    s = THISession(engine, q, BANK, THIConfig(mode="auto", xi=0.99), judge=judge)
    run_session(s)
    assert seen == [h.payload["image"] for h in base[:3]]
    assert s.anchor == base[2].id and s.ranking[0].id == base[2].id

    # confident top-1 rejected: later Yes answers cannot anchor (round k > 1 needs top-1 S ≤ ξ)
    judge, seen = _scripted([False, True, True, True, True])
    s = THISession(engine, q, BANK, THIConfig(mode="auto", xi=top1 - 0.01, rounds=5), judge=judge)
    run_session(s)
    assert s.anchor is None and len(seen) == 5 and [h.id for h in s.ranking] == [h.id for h in base]

    # the default judge and VQA are the MLLM's own answers (the fake one reads the attributes)
    s = THISession(engine, q, BANK, THIConfig(mode="auto", xi=0.5))
    run_session(s)
    assert s.anchor is not None
    assert all(h.payload["answers"]["gender"] == queries[0]["attributes"]["gender"] for h in s.ranking[:2])


def test_rewrite_and_errors(world):
    engine, _ = world
    assert rewrite_query("a man.", [(BANK[1], "red")]) == "a man. upper color: red."
    with pytest.raises(LineupError, match="empty query"):
        THISession(engine, " ", BANK)
    with pytest.raises(LineupError, match="answerer"):
        THISession(engine, "man", BANK).step()
    with pytest.raises(LineupError, match="no images matching"):
        THISession(engine, "man", BANK, filter={"camera_id": 99})
    with pytest.raises(ValueError, match="mode"):
        THIConfig(mode="chat")
