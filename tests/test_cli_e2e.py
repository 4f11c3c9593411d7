"""The terminal front end end to end on the tiny base: index → search → chat (THI questions, composed step,
undo, quit) → batch → eval, through `cli.main.main` exactly as a user runs `lineup ...`."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from finetune.data.world import QUESTION_BANK, answer_from_attributes


@pytest.fixture(scope="module")
def gallery(tiny_gallery, tiny_base, tiny_adapter):
    """The shared indexed gallery (conftest `tiny_gallery`) plus the embedder that built it."""
    from mllm_embed import load_embedder

    return {**tiny_gallery, "embedder": load_embedder(tiny_base, adapter=tiny_adapter)}


def test_index_is_idempotent_and_image_search_finds_itself(gallery, capsys, tmp_path):
    common, records = gallery["common"], gallery["records"]
    capsys.readouterr()
    assert main(["index", *common, "--dataset", records[0].image.rsplit("/images/", 1)[0]]) == 0
    assert f"indexed 0 new images; collection 'gallery' holds {len(records)}" in capsys.readouterr().out
    query = records[5].image
    sheet = tmp_path / "sheet.png"
    assert main(["search", *common, "--image", query, "-k", "3", "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    first_row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert query.rsplit("/", 1)[1] in first_row and "1.000" in first_row  # the photo itself ranks first
    assert sheet.stat().st_size > 1000
    assert main(["search", *common, "--text", "a woman in a red coat", "--filter", "camera_id=1",
                 "--no-preview"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.lstrip("│ ")[:1].isdigit()]
    assert rows and all(line.split("│")[4].strip() == "1" for line in rows)  # camera column honours the filter


def test_a_collection_refuses_queries_from_another_adapter(gallery, tiny_base, capsys):
    capsys.readouterr()
    assert main(["search", "--model", str(tiny_base), "--adapter", "none", "--qdrant-path", str(gallery["qdrant"]),
                 "--text", "a man in a red top"]) == 2
    out = capsys.readouterr().out
    assert "was built with adapter_sha256=" in out and "use the same model/adapter" in out


def _target_rank(ranking, person_id) -> int:
    return next(i for i, h in enumerate(ranking, 1) if h.payload["person_id"] == person_id)


def test_chat_session_improves_target_rank_and_undoes(gallery):
    from cli.chat import ChatSession
    from finetune.data.world import QUESTION_BANK, answer_from_attributes
    from retrieval.engine import SearchEngine
    from retrieval.store import open_store

    records = gallery["records"]
    with open_store(path=gallery["qdrant"]) as store:
        session = ChatSession(SearchEngine(gallery["embedder"], store, "gallery"), QUESTION_BANK, k=5)
        # a query whose person is not already first: there is something to improve
        for record in records:
            start = session.handle(record.captions[0])
            if _target_rank(start.ranking, record.person_id) > 1:
                break
        pid, attrs = record.person_id, gallery["attrs"][record.image]
        ranks = [_target_rank(start.ranking, pid)]
        for _ in range(3):
            step = session.handle(answer_from_attributes(attrs, session.pending["key"]))
            ranks.append(_target_rank(step.ranking, pid))
        assert ranks[-1] < ranks[0], ranks
        assert ranks[-1] == 1, ranks  # three truthful answers single the person out in this small gallery
        before = session.ranking
        composed = session.handle("like #2 but wearing a hat")
        assert composed.kind == "composed" and composed.label == "like #2 but wearing a hat"
        assert [h.id for h in session.undo().ranking] == [h.id for h in before]
        assert session.handle("quit") is None


def test_chat_command_runs_a_dialogue_from_the_terminal(gallery, monkeypatch, tmp_path, capsys):
    from finetune.data.world import QUESTION_BANK, answer_from_attributes

    record = gallery["records"][0]
    attrs = gallery["attrs"][record.image]
    key_of = {q["question"]: q["key"] for q in QUESTION_BANK}
    script = iter([record.captions[0], None, None, "like #1 but with a red top", "undo", "quit"])

    def ask(prompt, console=None):  # the user at the terminal: answers each question truthfully
        line = next(script)
        return answer_from_attributes(attrs, key_of[prompt]) if line is None else line

    monkeypatch.setattr("rich.prompt.Prompt.ask", ask)
    transcript = tmp_path / "chat.txt"
    assert main(["chat", *gallery["common"], "--transcript", str(transcript), "--no-preview"]) == 0
    lines = transcript.read_text().splitlines()
    typed = [line[len("you> "):] for line in lines if line.startswith("you> ")]
    assert typed[0] == record.captions[0] and typed[3:] == ["like #1 but with a red top", "undo", "quit"]
    steps = [line for line in lines if line.startswith("[")]
    assert [s.split("]")[0] for s in steps] == ["[describe", "[answer", "[answer", "[composed", "[answer"]
    assert steps[4] == steps[2]  # undo restores the step before the composed one, ranking included
    assert lines[-1] == "bye"
    top = steps[2].split(" :: ")[1].split()[0]  # ranking after two truthful answers, image names best first
    assert top.startswith(f"{record.person_id:05d}_")


def test_batch_and_eval_commands(gallery, tiny_world, tmp_path, capsys):
    records = gallery["records"]
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "image": records[3].image, "k": 2}) + "\n"
                       + json.dumps({"id": "b", "text": records[4].captions[0]}) + "\n")
    out = tmp_path / "r.jsonl"
    assert main(["batch", *gallery["common"], "--queries", str(queries), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first = next(r for r in rows if r["query_id"] == "a" and r["rank"] == 1)
    assert first["image"] == records[3].image
    assert sum(r["query_id"] == "a" for r in rows) == 2 and sum(r["query_id"] == "b" for r in rows) == 10

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"id": "a", "text": "a man"}) + "\n{not json\n")
    capsys.readouterr()
    assert main(["batch", *gallery["common"], "--queries", str(broken), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "broken.jsonl:2: not valid JSON" in capsys.readouterr().out  # names the file and line

    report = tmp_path / "eval.json"
    assert main(["eval", *gallery["common"][:4], "--world", str(tiny_world),
                 "--task", "t2i", "--answer-weight", "0.3", "--json", str(report)]) == 0
    got = json.loads(report.read_text())
    for metrics in (got["t2i"], got["t2i_answers"]):  # the embedding alone, then re-ranked by asked answers
        assert {"R1", "R5", "R10", "mAP", "mINP"} <= set(metrics) and 0 <= metrics["R1"] <= metrics["R10"] <= 100

    # NAM's wrong-word detection from the CLI: the same AUC as finetune.nam on the split's people
    from finetune import nam
    from finetune.data import load_split

    assert main(["eval", *gallery["common"][:4], "--world", str(tiny_world), "--task", "noise", "--nam-layer", "0",
                 "--json", str(report)]) == 0
    got = json.loads(report.read_text())["noise"]
    expected = nam.detection_auc(gallery["embedder"], load_split(tiny_world, "test"), layer=0, joint=False)
    assert got["AUC_two_tower"] == pytest.approx(100 * expected) and 0 <= got["AUC_joint"] <= 100


def test_answer_reranking_from_the_cli(gallery, tmp_path, capsys):
    """With the gallery's cached answers (true ones here), a text query's first hit agrees with everything the
    caption states that the base answers better than chance (what its evidence counts) once the answers weigh in,
    `batch` ranks exactly as `search` does, and `--answer-weight 0` ranks by the cosine alone (scores ≤ 1)."""
    from retrieval.judge import (DEFAULT_RELIABILITY, RELIABILITY_BOUNDS, answer_reliability, match_score,
                                 world_vocabulary)

    records, attrs = gallery["records"], gallery["attrs"]
    by_image = {r.image: r for r in records}
    voc = world_vocabulary()
    # the fixture base's stage-0 accuracies: a question it answers at chance or worse adds no evidence either way
    reliability = answer_reliability(gallery["embedder"])
    counted = {q["key"] for q in QUESTION_BANK
               if reliability.get(q["key"], DEFAULT_RELIABILITY) > RELIABILITY_BOUNDS[0]}
    answers = {img: {q["key"]: answer_from_attributes(a, q["key"]) for q in QUESTION_BANK if q["key"] in counted}
               for img, a in attrs.items()}
    texts = [r.captions[0] for r in records[::7]]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": str(i), "text": t, "k": 3}) + "\n" for i, t in enumerate(texts)))
    assert all(voc.stated(t).keys() & counted for t in texts)
    for weight, check in (("5", lambda top, text: match_score(answers[top], text, voc) == 1.0),
                          ("0", lambda top, text: True)):
        out = tmp_path / f"r{weight}.jsonl"
        assert main(["batch", *gallery["common"], "--queries", str(queries), "--out", str(out),
                     "--answer-weight", weight]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        tops = {r["query_id"]: r for r in rows if r["rank"] == 1}
        assert all(check(tops[str(i)]["image"], t) for i, t in enumerate(texts))
        assert all(r["score"] <= 1.0 + 1e-6 for r in rows) == (weight == "0")
        capsys.readouterr()
        assert main(["search", *gallery["common"], "--text", texts[0], "-k", "1", "--no-preview",
                     "--answer-weight", weight]) == 0
        assert by_image[tops["0"]["image"]].image.rsplit("/", 1)[1] in capsys.readouterr().out
