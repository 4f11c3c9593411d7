"""THI: the interactive loop lifts Rank-1 with a simulated user; auto mode follows the ICL anchor rule."""

from __future__ import annotations

import numpy as np
import pytest
from _retrieval_fakes import BANK, VOCAB, FakeEmbedder, caption, make_gallery

from mllm_embed.errors import LineupError
from retrieval.dialogue import Vocabulary
from retrieval.engine import SearchEngine
from retrieval.judge import world_vocabulary
from retrieval.metrics import rank_metrics
from retrieval.store import open_store
from retrieval.thi import Asked, THIConfig, THISession, evaluate_thi, rewrite_query, run_session


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    records, attrs = make_gallery(tmp_path_factory.mktemp("thi") / "imgs", identities=30, per_id=2, seed=3)
    emb = FakeEmbedder(attrs, noise=0.02)
    engine = SearchEngine(emb, open_store(url=":memory:"), "g")
    engine.index_images(records)
    engine.cache_answers(BANK)  # the fake "MLLM" answers from the person's attributes
    by_pid = {r.person_id: r.attributes for r in records}
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
    assert r1.action == Asked(first, q["attributes"][first["key"]])
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
    assert skipped.action.answer is None and skipped.ranking == session.rounds[0].ranking
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
    base = THISession(engine, q, BANK, THIConfig(mode="auto", judge="question")).ranking
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

    # without a scripted judge the MLLM's own answers decide (the fake one reads the attributes): its yes/no to
    # match_question, or (the default) its answers to the bank against what the query states
    vocabulary = Vocabulary.build(BANK, VOCAB, {})
    for judge in ("question", "answers"):
        s = THISession(engine, q, BANK, THIConfig(mode="auto", xi=0.5, judge=judge), vocabulary=vocabulary)
        run_session(s)
        assert s.anchor is not None
        assert all(h.payload["answers"]["gender"] == queries[0]["attributes"]["gender"] for h in s.ranking[:2])
    with pytest.raises(LineupError, match="Vocabulary"):
        THISession(engine, q, BANK, THIConfig(mode="auto"))


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


# --- the dialogue that learns from the user: vocabulary, feedback, filters, the three simulated users -------


def test_vocabulary_reads_descriptions_answers_and_filters(tiny_world):
    import json

    from finetune.data.world import QUESTION_BANK, answer_from_attributes

    voc = world_vocabulary()
    known = voc.implied(voc.parse("a woman with long brown hair in a red coat and black trousers"))
    assert known == {"gender": "female", "hair_length": "long", "hair_color": "brown", "upper_type": "coat",
                     "upper_color": "red", "sleeve_length": "long", "lower_type": "trousers", "lower_color": "black"}
    known = voc.implied(voc.parse("A man in a jacket in red, carrying nothing, no hat or glasses"))
    assert known["has_bag"] == known["has_hat"] == known["has_glasses"] == "no" and known["bag_color"] == "none"
    assert voc.canonical("hair_length", "red") is None and "long" in voc.hint("hair_length", "red")
    assert voc.canonical("gender", "yes") is None and voc.canonical("gender", "a guy") == "male"
    assert voc.canonical("upper_color", "grey") == "gray" and voc.canonical("has_bag", "yep") == "yes"
    assert voc.filter_phrase("only with a backpack").conditions == {"answers.bag": "backpack"}
    assert voc.filter_phrase("no hat").conditions == {"answers.hat": "none"}
    assert voc.filter_phrase("only women").conditions == {"answers.gender": "female"}
    assert voc.filter_phrase("camera 3").conditions == {"camera_id": 3}
    assert voc.filter_phrase("no") is None and voc.filter_phrase("red") is None
    # every caption of the world: what the parser reads is true, and it reads most of it
    rows = [json.loads(line) for line in (tiny_world / "annotations.jsonl").read_text().splitlines()]
    read = wrong = 0
    for row in rows:
        truth = {q["key"]: answer_from_attributes(row["attributes"], q["key"]) for q in QUESTION_BANK}
        for cap in row["captions"]:
            got = voc.implied(voc.parse(cap))
            read += len(got)
            wrong += sum(truth[k] != v for k, v in got.items())
    assert wrong == 0 and read / (2 * len(rows)) > 7  # of 16 questions


@pytest.mark.parametrize("url", [":memory:", None])
def test_feedback_queries_on_both_backends(tmp_path, url):
    from retrieval.store import FEEDBACK_STRATEGIES

    store = open_store(url=url) if url else open_store(path=tmp_path / "q")
    store.ensure_collection("c", 4, {})
    vecs = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]] + 0.05
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(5)]
    store.upsert("c", ids, vecs, [{"answers": {"hat": "cap" if i % 2 else "none"}} for i in range(5)])
    store.index_payload_field("c", "answers.hat")
    for strategy in FEEDBACK_STRATEGIES:
        hits = store.feedback_search("c", strategy, vecs[[1]], vecs[[3]], k=5, target=vecs[0])
        order = [h.id for h in hits]
        assert order.index(ids[0]) < order.index(ids[3]), strategy  # like #1 (axis 0), unlike #3 (axis 2)
    hits = store.feedback_search("c", "best_score", vecs[[1]], vecs[:0], k=5, ids=ids[2:],
                                 filter={"answers.hat": "cap"})
    assert {h.id for h in hits} == {ids[3]}
    assert [h.id for h in store.diverse_search("c", vecs[0], k=2, diversity=0.9)][0] in ids[:2]
    with pytest.raises(LineupError, match="needs a positive and a negative"):
        store.feedback_search("c", "context", vecs[[1]], vecs[:0])
    store.close()


class IdentityEmbedder:
    """FakeEmbedder images plus their person's own direction, which no text names: look-alikes (the same
    attributes) that only feedback on their images can tell apart."""

    def __init__(self, attrs_by_image, person_of, strength=0.8, noise=0.2):
        self.fake = FakeEmbedder(attrs_by_image, noise=0.0, dim_pad=32)
        self.person_of, self.strength, self.noise = person_of, strength, noise
        self.dim, self.config = self.fake.dim, self.fake.config

    def encode_text(self, texts, batch_size=16, progress=None):
        return self.fake.encode_text(texts)

    def encode_images(self, images, batch_size=16, progress=None):
        import hashlib
        from pathlib import Path

        from _retrieval_fakes import onehot

        out = []
        for image in images:
            person = np.random.default_rng(self.person_of[str(image)]).normal(size=32) / np.sqrt(32)
            x = np.concatenate([onehot(self.fake.attrs_by_image[str(image)]), self.strength * person])
            seed = int(hashlib.sha1(Path(str(image)).name.encode()).hexdigest()[:8], 16)
            x = x + self.noise * np.random.default_rng(seed).normal(size=x.shape)
            out.append(x / np.linalg.norm(x))
        return np.stack(out).astype(np.float32)


_KEY = {b["question"]: b["key"] for b in BANK}  # the attribute each bank question asks about


def _lookalikes(tmp_path):
    """Six attribute combinations worn by eight look-alikes each (3 images apiece), indexed with true cached
    answers: (engine, records, attributes by image, person by image, one text query per person)."""
    import itertools

    from PIL import Image

    rng = np.random.default_rng(0)
    combos = list(itertools.product(*VOCAB.values()))
    records, attrs, person_of = [], {}, {}
    for c in rng.choice(len(combos), size=6, replace=False):
        a = dict(zip(VOCAB, combos[c]))
        for _ in range(8):
            pid = len(records) // 3
            for k in range(3):
                path = str(tmp_path / f"{pid:04d}_{k}.png")
                Image.new("RGB", (2, 2)).save(path)
                records.append({"image": path, "person_id": pid, "camera_id": k, "attributes": a})
                attrs[path], person_of[path] = a, pid
    engine = SearchEngine(IdentityEmbedder(attrs, person_of), open_store(path=tmp_path / "q"), "g")
    engine.index_images(records)
    engine.cache_answers(BANK, answer_fn=lambda image, q: attrs[image][_KEY[q]])
    people = {r["person_id"]: r["attributes"] for r in records}
    queries = [{"text": caption(a, ["gender"]), "person_id": p, "attributes": a, "answers": a}
               for p, a in sorted(people.items())]
    return engine, records, attrs, person_of, queries


def test_feedback_beats_questions_and_filters_beat_feedback(tmp_path):
    """The ordering the dialogue benchmark reports on a fixture where it holds by construction (`_lookalikes`).
    Questions can only find the combination; marking a shown look-alike "not him" drops its images; a filter from
    the true answers drops every candidate of another combination outright where an answer only re-weights it."""
    from retrieval.thi import evaluate_dialogue

    engine, records, attrs, person_of, queries = _lookalikes(tmp_path)
    hits = {}
    for variant in ("questions", "feedback", "filters"):
        result = evaluate_dialogue(engine, queries, BANK, THIConfig(rounds=3), answerer_for=simulated_user,
                                   variant=variant, seen=lambda hit: hit.payload["attributes"])
        hits[variant] = [r["Hits@10"] for r in result["rounds"]]
        assert hits[variant] == sorted(hits[variant])  # cumulative
    assert hits["questions"][0] == hits["feedback"][0] == hits["filters"][0]  # the same round 0
    assert hits["questions"][3] < hits["feedback"][3] < hits["filters"][3]

    # why questions miss here: the person on top wears the same combination, so it agrees with all that is known
    voc = Vocabulary.build(BANK, VOCAB, {})
    result = evaluate_dialogue(engine, queries, BANK, THIConfig(rounds=3), answerer_for=simulated_user,
                               vocabulary=voc, seen=lambda hit: hit.payload["attributes"])
    misses = result["misses"]
    assert len(misses) == round(len(queries) * (1 - result["rounds"][-1]["R1"] / 100)) > 0
    assert all(m["top_differs"] == m["top_cached_wrong"] == m["target_cached_wrong"] == [] for m in misses)
    # a cache that has the wanted person's gender wrong is named as the cause
    wanted = queries[0]
    wrong = {"man": "woman", "woman": "man"}
    misled = SearchEngine(engine.embedder, engine.store, "misled")
    misled.index_images(records)
    misled.cache_answers(BANK, answer_fn=lambda image, q: (
        wrong[attrs[image]["gender"]] if person_of[image] == wanted["person_id"] and q == BANK[0]["question"]
        else attrs[image][_KEY[q]]))
    result = evaluate_dialogue(misled, [wanted], BANK, THIConfig(rounds=3), answerer_for=simulated_user,
                               vocabulary=voc, seen=lambda hit: hit.payload["attributes"])
    [miss] = result["misses"]
    assert miss["target_cached_wrong"] == ["gender"] and miss["rank"] > 1
    engine.store.close()


def test_a_filter_that_drops_the_wanted_person_ranks_their_images_last(tmp_path):
    """A filter from the true answers drops the wanted person's images when the cache has them wrong: they rank
    below every point the filtered search returns, last, so mAP charges the miss in full whatever order the store
    keeps the dropped points in."""
    from retrieval.thi import evaluate_dialogue

    engine, records, attrs, person_of, queries = _lookalikes(tmp_path)
    wanted = queries[0]
    wrong = {k: next(v for v in VOCAB[k] if v != a) for k, a in wanted["attributes"].items()}
    misled = SearchEngine(engine.embedder, engine.store, "misled")
    misled.index_images(records)
    misled.cache_answers(BANK, answer_fn=lambda image, q: (
        wrong if person_of[image] == wanted["person_id"] else attrs[image])[_KEY[q]])
    result = evaluate_dialogue(misled, [wanted], BANK, THIConfig(rounds=3), answerer_for=simulated_user,
                               variant="filters", seen=lambda hit: hit.payload["attributes"])
    n = len(records)
    final = result["rounds"][-1]
    assert final["R1"] == 0 and final["mAP"] == pytest.approx(100 * np.mean([1 / (n - 2), 2 / (n - 1), 3 / n]))
    assert final["Hits@10"] == result["rounds"][0]["Hits@10"]  # round 0's hit, if any, is the only one
    engine.store.close()


def test_listening_session_skips_what_the_description_says(world):
    from finetune.data.world import QUESTION_BANK

    engine, _ = world
    voc = world_vocabulary()
    s = THISession(engine, "a woman with long brown hair in a red coat", QUESTION_BANK, THIConfig(rounds=16),
                   vocabulary=voc)
    asked = []
    while (q := s.next_question()) is not None:
        asked.append(q["key"])
        s.answer(q, "skip")
    assert not {"gender", "hair_length", "hair_color", "upper_type", "upper_color", "sleeve_length"} & set(asked)
    deaf = THISession(engine, "a woman with long brown hair in a red coat", QUESTION_BANK,
                      THIConfig(rounds=16, listen=False), vocabulary=voc)
    assert deaf.known == {} and "gender" in {q["key"] for q in QUESTION_BANK if q["key"] not in deaf.asked}


def test_listening_session_starts_from_the_reranked_search_and_weighs_answers_by_evidence(world):
    engine, queries = world
    voc = Vocabulary.build(BANK, VOCAB, {})
    reranking = SearchEngine(engine.embedder, engine.store, engine.collection, vocabulary=voc, answer_weight=0.1)
    q = queries[7]
    s = THISession(reranking, q["text"], BANK, THIConfig(rounds=3))  # the engine's vocabulary: it listens
    assert s.vocabulary is voc and s.known
    assert [h.id for h in s.ranking[:10]] == [h.id for h in reranking.search_text(q["text"], k=10)]
    # with λ = 1 an answer moves each candidate by ± answer_weight × the log-odds of its cached answer being
    # right (90 % for a base without a val report): + where it agrees, − where it contradicts
    s = THISession(reranking, q["text"], BANK, THIConfig(rounds=3, lam=1.0))
    before = {h.id: h.score for h in s.ranking}
    question = s.next_question()
    truth = q["attributes"][question["key"]]
    moved = {h.id: (h.score - before[h.id], h.payload["answers"][question["key"]] == truth)
             for h in s.answer(question, truth).ranking}
    assert {agrees for _, agrees in moved.values()} == {True, False}
    for delta, agrees in moved.values():
        assert delta == pytest.approx((1 if agrees else -1) * 0.1 * np.log(9), abs=1e-5)
    listening = evaluate_thi(reranking, queries, BANK, THIConfig(rounds=3), answerer_for=simulated_user)
    assert listening[3]["R1"] >= listening[0]["R1"] + 30
