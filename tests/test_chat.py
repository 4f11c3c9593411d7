"""`lineup chat`'s dialogue on the model-free fake gallery: it listens (no question the description answers,
answers checked against the options), takes relevance feedback and answer filters, undoes every kind of step,
leaves the reference out of composed results, keeps a transcript and replays it to the same ranking."""

from __future__ import annotations

import pytest
from _retrieval_fakes import BANK, VOCAB, FakeEmbedder, make_gallery

from cli.chat import INPUT, ChatSession, read_transcript, run_chat
from mllm_embed.errors import LineupError
from retrieval.dialogue import Vocabulary
from retrieval.engine import SearchEngine
from retrieval.store import open_store


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    records, attrs = make_gallery(root / "imgs", identities=40, per_id=3, seed=5)
    engine = SearchEngine(FakeEmbedder(attrs, noise=0.3), open_store(path=root / "q"), "g")
    engine.index_images(records)
    engine.cache_answers(BANK)
    engine.records = records
    yield engine
    engine.store.close()


def session(engine, k=5) -> ChatSession:
    return ChatSession(engine, BANK, k=k, vocabulary=Vocabulary.build(BANK, VOCAB, {}))


def test_listens_and_checks_answers(engine):
    s = session(engine)
    s.handle("woman red")
    assert s.pending["key"] != "gender"  # the description said it
    assert s.thi.known["gender"] == "woman"
    key = s.pending["key"]
    with pytest.raises(LineupError, match="does not answer") as err:
        s.handle("purple")
    assert all(v in str(err.value) for v in VOCAB[key])  # the hint lists the options
    s.handle(VOCAB[key][0])
    assert s.steps[-1].kind == "answer" and key in s.thi.known and s.pending["key"] != key
    with pytest.raises(LineupError, match="new <description>"):
        s.handle("new")  # bare 'new' is not an answer
    assert len(s.steps) == 2


def test_feedback_filters_undo_and_composed(engine):
    s = session(engine)
    with pytest.raises(LineupError, match="describe the person first"):
        s.handle("like #99 but red")
    s.handle("man")
    with pytest.raises(LineupError, match="#1 to #5"):
        s.handle("like #99 but red")
    top = [h.id for h in s.ranking[:5]]
    step = s.handle("more like #2, not like #4")
    assert step.kind == "feedback" and s.thi.positives == (top[1],) and s.thi.negatives == (top[3],)
    assert "1 like, 1 unlike" in s.header()
    assert [h.id for h in s.ranking].index(top[1]) < [h.id for h in s.ranking].index(top[3])
    assert s.ranking[-1].id == top[3]  # the image marked unlike goes below every other
    free = next(r for r, h in enumerate(s.ranking[:5], 1) if h.id not in s.thi.positives + s.thi.negatives)
    s.handle(f"not #{free}")
    assert len(s.thi.negatives) == 2

    s.handle("only bareheaded")
    assert "filters: only bareheaded" in s.header()
    assert s.ranking and all(h.payload["answers"]["hat"] == "bareheaded" for h in s.ranking)
    s.handle("only woman")
    assert all(h.payload["answers"]["gender"] == "woman" for h in s.ranking)
    s.handle("drop the bareheaded filter")
    assert "only woman" in s.header() and "bareheaded" not in s.header()
    assert any(h.payload["answers"]["hat"] == "hat" for h in s.ranking)
    with pytest.raises(LineupError, match="no active filter matches"):
        s.handle("drop the backpack filter")
    n = len(s.steps)
    s.handle("undo")  # the drop
    assert "bareheaded" in s.header() and len(s.steps) == n - 1
    s.handle("undo")
    s.handle("undo")
    assert s.header() == "filters: none | feedback: 1 like, 2 unlike"
    s.handle("undo")
    assert len(s.thi.negatives) == 1

    ref = s.ranking[2]
    step = s.handle("like #3 but red")
    assert step.kind == "composed" and ref.id not in [h.id for h in step.ranking]
    s.handle("undo")
    assert s.steps[-1].kind == "feedback"


def test_transcript_resume_and_interrupt(engine, tmp_path):
    lines = iter(["man", "#1 is close", "not #2", "only bareheaded", "like #9 but red", "quit"])
    path = tmp_path / "t.txt"
    shown = []
    s = session(engine)
    run_chat(s, read=lambda p: next(lines), show=shown.append, say=lambda t: None, transcript=path)
    assert len(shown) == 4
    inputs, rankings = read_transcript(path)
    assert inputs[0] == "man" and len(rankings) == 4
    assert any("#9: pick a shown candidate" in line for line in path.read_text().splitlines())
    final = [h.id for h in s.ranking]

    def interrupt(prompt):
        raise KeyboardInterrupt

    resumed = session(engine)
    again = tmp_path / "again.txt"
    out = run_chat(resumed, read=interrupt, show=lambda step: None, say=lambda t: None, transcript=again,
                   resume=path)
    assert [h.id for h in resumed.ranking] == final
    assert any("same ranking as recorded" in line for line in out)
    assert "--resume" in out[-1] and str(again) in out[-1]
    assert again.read_text().count(INPUT) == 5  # everything replayed was written before the interrupt
    with pytest.raises(LineupError, match="no such transcript"):
        read_transcript(tmp_path / "missing.txt")


def test_verification_table_fits_80_columns():
    from rich.console import Console

    from cli.ui import metrics_table

    rows = {"embedding": {"accuracy": 0.82, "precision": 0.82, "recall": 0.82, "f1": 0.82, "auc": 0.88,
                          "threshold": 0.66, "threshold_source": "best accuracy on these pairs"},
            "mllm": {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "auc": 0.5, "yes_rate": 0.0}}
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(metrics_table("verification (same person?)", rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "best accuracy on these pairs" in text  # no header cut, the note on one line
    assert "thr" in text and "0.66" in text
