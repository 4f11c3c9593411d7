"""`lineup chat`: a search session in the terminal.

The user describes the person and sees ranked candidates, then, in any order:
- answers the system's THI question (checked against the question's options; `skip`); questions the description
  or an earlier answer already answers are never asked;
- gives relevance feedback on shown candidates: `#2 is close`, `not #4`, `more like #2, not like #4`;
- filters on the cached answers: `only with a backpack`, `no hat`, `only women`, `camera 3`; `drop the backpack
  filter`, `drop filters`;
- switches to a composed query from a candidate: `like #3 but with a red coat` (the reference itself is left out);
- `undo` (any step), `new <description>`, `quit`.
Each step is one entry on a history stack, so undo works the same for every kind. Every input line goes to a
transcript file as it is typed; `lineup chat --resume TRANSCRIPT` replays its inputs to the same ranking.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_embed.errors import LineupError

MENTION = re.compile(r"#(\d+)")
COMPOSED = re.compile(r"^(?:like\s+)?#(\d+)\s*,?\s*(?:but\s+)?(.+)$", re.IGNORECASE)
FEEDBACK_WORDS = {"is", "are", "close", "closer", "more", "like", "not", "no", "and", "similar", "good", "wrong",
                  "yes", "right", "looks", "less", "unlike", "isn't", "aren't", "too", "this", "one", "very", "but",
                  "also", "the", "person", "is't", "nope"}
NEGATIVE_BEFORE = {"not", "no", "unlike", "less"}
NEGATIVE_AFTER = {"wrong", "not", "no", "isn't", "aren't", "nope"}
INPUT = "you> "
HELP = ("answer the question (one of its options, or 'skip'); '#2 is close' / 'not #4' for feedback; "
        "'only with a backpack' / 'no hat' / 'camera 3' to filter, 'drop the backpack filter'; "
        "'like #N but <change>' for a composed query; 'undo', 'new <description>', 'quit'")
SCORE_NOTE = ("score: the query's cosine similarity plus the evidence of each image's cached answers for what "
              "you said and the feedback (higher = better)")


@dataclass
class Step:
    kind: str  # "describe" | "answer" | "feedback" | "filter" | "composed"
    ranking: list  # list[Hit]
    label: str


class ChatSession:
    """The dialogue state over a SearchEngine; rendering and input live in `run_chat`."""

    def __init__(self, engine: Any, question_bank: Sequence[dict[str, str]], k: int = 5, thi_config=None,
                 vocabulary=None):
        from retrieval.thi import THIConfig

        self.engine, self.bank, self.k = engine, list(question_bank), k
        self.vocabulary = vocabulary
        self.thi_config = thi_config or THIConfig(mode="interactive", rounds=len(self.bank))
        self.thi = None
        self.steps: list[Step] = []
        self.pending: dict[str, str] | None = None

    @property
    def ranking(self) -> list:
        return self.steps[-1].ranking if self.steps else []

    def header(self) -> str:
        """What is active: filters and feedback, and how to read the scores."""
        parts = []
        if self.thi is not None:
            parts.append("filters: " + (", ".join(f.label for f in self.thi.filters) or "none"))
            if self.thi.positives or self.thi.negatives:
                parts.append(f"feedback: {len(self.thi.positives)} like, {len(self.thi.negatives)} unlike")
        return " | ".join(parts)

    def describe(self, text: str) -> Step:
        from retrieval.thi import THISession

        self.thi = THISession(self.engine, text, self.bank, self.thi_config, vocabulary=self.vocabulary)
        self.steps = [Step("describe", self.thi.ranking, text)]
        self._next_question()
        return self.steps[-1]

    def _next_question(self) -> None:
        self.pending = self.thi.next_question() if self.thi and not self.thi.done else None

    def _push(self, step: Step) -> Step:
        self.steps.append(step)
        self._next_question()
        return step

    def answer(self, text: str) -> Step:
        if self.pending is None:
            raise LineupError("no open question: give feedback ('#2 is close'), a filter, 'like #N but ...', "
                              "or start over with 'new <description>'")
        value = None
        if text.lower() != "skip":
            value = self.vocabulary.canonical(self.pending["key"], text) if self.vocabulary else text
            if value is None:
                raise LineupError(self.vocabulary.hint(self.pending["key"], text))
        rnd = self.thi.answer(self.pending, value)
        said = rnd.action.answer or "skipped"
        return self._push(Step("answer", rnd.ranking, f"{self.pending['question']} → {said}"))

    def _shown(self, rank: int) -> Any:
        shown = min(self.k, len(self.ranking))
        if not 1 <= rank <= shown:
            raise LineupError(f"#{rank}: pick a shown candidate, #1 to #{shown}")
        return self.ranking[rank - 1]

    def feedback(self, line: str) -> Step:
        """'#2 is close', 'not #4', 'more like #2, not like #4': the mentioned candidates, each liked unless a
        negation comes before it in its clause or after it ('#4 is wrong')."""
        pos, neg = [], []
        for clause in re.split(r"[,;]|\bbut\b", line.lower()):
            for m in MENTION.finditer(clause):
                hit = self._shown(int(m.group(1)))
                before = set(re.findall(r"[a-z']+", clause[: m.start()]))
                after = set(re.findall(r"[a-z']+", clause[m.end():]))
                (neg if before & NEGATIVE_BEFORE or after & NEGATIVE_AFTER else pos).append(hit.id)
        if self.thi is None or self.steps[-1].kind == "composed":
            raise LineupError("feedback re-ranks a description's results: 'undo' the composed step first")
        rnd = self.thi.feedback(pos, neg)
        label = ", ".join([f"like #{self._rank_of(i)}" for i in pos] + [f"unlike #{self._rank_of(i)}" for i in neg])
        return self._push(Step("feedback", rnd.ranking, label))

    def _rank_of(self, point: str) -> int:
        return next(i for i, h in enumerate(self.ranking, 1) if h.id == point)

    def add_filter(self, f) -> Step:
        rnd = self.thi.add_filter(f)
        if not rnd.ranking:
            self.thi.undo()
            raise LineupError(f"no candidate passes the filter '{f.label}': it was not added")
        return self._push(Step("filter", rnd.ranking, f"filter {f.label}"))

    def drop_filter(self, line: str) -> Step:
        from retrieval.dialogue import tokens

        words = [w for w in tokens(line) if w not in ("drop", "remove", "the", "filter", "filters", "all", "clear")]
        rnd = self.thi.drop_filter(words)
        return self._push(Step("filter", rnd.ranking, "filters: " + (", ".join(f.label for f in rnd.filters)
                                                                      or "none")))

    def composed(self, rank: int, modification: str) -> Step:
        reference = self._shown(rank)
        hits = self.engine.search_composed(reference.payload["image"], modification, k=max(self.k, 10) + 1,
                                           filter=self.thi.active_filter if self.thi else None)
        hits = [h for h in hits if h.id != reference.id]
        return self._push(Step("composed", hits, f"like #{rank} but {modification}"))

    def undo(self) -> Step:
        if len(self.steps) <= 1:
            raise LineupError("nothing to undo")
        last = self.steps.pop()
        if last.kind in ("answer", "feedback", "filter"):
            self.thi.undo()
        self._next_question()
        return self.steps[-1]

    def handle(self, line: str) -> Step | None:
        """One line of user input → the new step, or None for 'quit'."""
        line = line.strip()
        low = line.lower()
        if low in ("quit", "exit", "q"):
            return None
        if not line:
            raise LineupError(HELP)
        if low in ("help", "?"):
            raise LineupError(HELP)
        if low == "undo":
            return self.undo()
        if low == "new" or low.startswith("new "):
            if not line[4:].strip():
                raise LineupError("'new' starts over: type new <description>, e.g. 'new a man in a blue coat'")
            return self.describe(line[4:])
        mentions = MENTION.findall(line)
        if not self.steps:
            if mentions:
                raise LineupError("describe the person first: there are no candidates to pick from yet")
            return self.describe(line)
        if mentions:
            rest = set(re.findall(r"[a-z']+", MENTION.sub(" ", low))) - FEEDBACK_WORDS
            if not rest:
                return self.feedback(line)
            match = COMPOSED.match(line)
            if match:
                return self.composed(int(match.group(1)), match.group(2).strip())
            raise LineupError(f"'{line}': say '#2 is close', 'not #4', or 'like #2 but <change>'")
        if low.startswith(("drop ", "remove ", "clear filter")):
            return self.drop_filter(line)
        f = self.vocabulary.filter_phrase(line) if self.vocabulary else None
        if f is not None:  # "no hat" filters; a bare "no" answers
            return self.add_filter(f)
        return self.answer(line)


def ranking_line(step: Step, k: int) -> str:
    """A step's kind, label and shown images, as the transcript records it (and `--resume` compares)."""
    shown = " ".join(Path(h.payload.get("image", h.id)).name for h in step.ranking[:k])
    return f"[{step.kind}] {step.label} :: {shown}"


def read_transcript(path: Path) -> tuple[list[str], list[str]]:
    """The input lines of a transcript and the ranking lines recorded after them."""
    if not Path(path).is_file():
        raise LineupError(f"{path}: no such transcript — pass a file `lineup chat` wrote (--transcript)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LineupError(f"{path}: cannot read the transcript ({err})") from err
    inputs = [line[len(INPUT):] for line in text.splitlines() if line.startswith(INPUT)]
    rankings = [line for line in text.splitlines() if line.startswith("[")]
    if not inputs:
        raise LineupError(f"{path}: no input lines ('{INPUT}...') in this file — is it a chat transcript?")
    return inputs, rankings


def run_chat(session: ChatSession, read: Callable[[str], str], show: Callable[[Step], None],
             say: Callable[[str], None], transcript: Path | None = None,
             resume: Path | None = None) -> list[str]:
    """The read–eval–print loop; returns the transcript lines. Each line is appended to `transcript` as it
    happens, so an interrupted session keeps everything typed so far. `resume`: replay that transcript's
    inputs first (checking that each step's shown ranking is the one it recorded), then go on."""
    lines: list[str] = []
    out = open(transcript, "a", encoding="utf-8") if transcript else None  # noqa: SIM115

    def record(text: str) -> None:
        lines.append(text)
        if out:
            out.write(text + "\n")
            out.flush()

    def log(text: str) -> None:
        record(text)
        say(text)

    def apply(line: str) -> Step | None:
        record(f"{INPUT}{line}")
        try:
            step = session.handle(line)
        except LineupError as err:
            log(f"! {err}")
            return session.steps[-1] if session.steps else None
        if step is not None:
            record(ranking_line(step, session.k))
        return step

    try:
        if resume:
            inputs, recorded = read_transcript(resume)
            inputs = [i for i in inputs if i.strip().lower() not in ("quit", "exit", "q")]
            for line in inputs:
                apply(line)
            replayed = [ln for ln in lines if ln.startswith("[")]
            same = replayed == recorded
            log(f"replayed {len(inputs)} inputs from {resume}: " + (
                "same ranking as recorded" if same else "the ranking differs from the recording "
                "(another index or model?)"))
            if session.steps:
                show(session.steps[-1])
        else:
            log("Describe the person you are looking for (or 'quit'; 'help' lists what you can say).")
        while True:
            prompt = f"{session.pending['question']} " if session.pending else "> "
            try:
                line = read(prompt)
            except EOFError:
                break
            before = len(session.steps), session.steps[-1] if session.steps else None
            step = apply(line)
            if line.strip().lower() in ("quit", "exit", "q"):
                break
            if step is None or (len(session.steps), session.steps[-1] if session.steps else None) == before:
                continue
            show(step)
            if session.pending is None:
                log("No more questions: give feedback ('#2 is close'), a filter, 'like #N but ...', 'undo', "
                    "'new ...' or 'quit'.")
        log("bye")
    except KeyboardInterrupt:
        where = f"; the transcript is in {transcript} — `lineup chat --resume {transcript}` picks up here" \
            if transcript else ""
        log(f"interrupted{where}")
    finally:
        if out:
            out.close()
    return lines
