"""`lineup chat`: a search session in the terminal.

The user describes the person, sees ranked candidates, answers the system's THI questions (any value, yes/no,
`skip`), can switch to a composed query from a candidate ("like #3 but with a red coat"), `undo` the last step,
start over with `new <description>`, and `quit`. Each step is one entry on a history stack, so undo works the
same for questions and composed steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_embed.errors import LineupError

COMPOSED = re.compile(r"^(?:like\s+)?#(\d+)\s*(?:,?\s*but\s+)?(.+)$", re.IGNORECASE)
HELP = ("answer the question (a value, yes/no), 'skip', 'like #N but <change>' for a composed query, "
        "'undo', 'new <description>', 'quit'")


@dataclass
class Step:
    kind: str  # "describe" | "answer" | "composed"
    ranking: list  # list[Hit]
    label: str


class ChatSession:
    """The dialogue state over a SearchEngine; rendering and input live in `run_chat`."""

    def __init__(self, engine: Any, question_bank: Sequence[dict[str, str]], k: int = 5, thi_config=None):
        from retrieval.thi import THIConfig

        self.engine, self.bank, self.k = engine, list(question_bank), k
        self.thi_config = thi_config or THIConfig(mode="interactive", rounds=len(self.bank))
        self.thi = None
        self.steps: list[Step] = []
        self.pending: dict[str, str] | None = None

    @property
    def ranking(self) -> list:
        return self.steps[-1].ranking if self.steps else []

    def describe(self, text: str) -> Step:
        from retrieval.thi import THISession

        self.thi = THISession(self.engine, text, self.bank, self.thi_config)
        self.steps = [Step("describe", self.thi.ranking, text)]
        self._next_question()
        return self.steps[-1]

    def _next_question(self) -> None:
        self.pending = self.thi.next_question() if self.thi and not self.thi.done else None

    def answer(self, text: str) -> Step:
        if self.pending is None:
            raise LineupError("no open question: describe the person first, or start over with 'new <description>'")
        rnd = self.thi.answer(self.pending, None if text.lower() == "skip" else text)
        label = f"{self.pending['question']} → {rnd.answer or 'skipped'}"
        self.steps.append(Step("answer", rnd.ranking, label))
        self._next_question()
        return self.steps[-1]

    def composed(self, rank: int, modification: str) -> Step:
        if not 1 <= rank <= min(self.k, len(self.ranking)):
            raise LineupError(f"#{rank}: pick a shown candidate, #1 to #{min(self.k, len(self.ranking))}")
        reference = self.ranking[rank - 1].payload["image"]
        hits = self.engine.search_composed(reference, modification, k=max(self.k, 10))
        self.steps.append(Step("composed", hits, f"like #{rank} but {modification}"))
        return self.steps[-1]

    def undo(self) -> Step:
        if len(self.steps) <= 1:
            raise LineupError("nothing to undo")
        last = self.steps.pop()
        if last.kind == "answer":
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
        if low == "undo":
            return self.undo()
        if low.startswith("new "):
            return self.describe(line[4:])
        if not self.steps:
            return self.describe(line)
        match = COMPOSED.match(line)
        if match:
            return self.composed(int(match.group(1)), match.group(2).strip())
        return self.answer(line)


def run_chat(session: ChatSession, read: Callable[[str], str], show: Callable[[Step], None],
             say: Callable[[str], None], transcript: Path | None = None) -> list[str]:
    """The read–eval–print loop; returns the transcript lines (also written to `transcript`)."""
    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(text)
        say(text)

    log("Describe the person you are looking for (or 'quit').")
    while True:
        prompt = f"{session.pending['question']} " if session.pending else "> "
        try:
            line = read(prompt)
        except EOFError:
            break
        lines.append(f"{prompt.strip()} {line}")
        try:
            step = session.handle(line)
        except LineupError as err:
            log(f"! {err}")
            continue
        if step is None:
            break
        tag = f"undo → {step.kind}" if line.strip().lower() == "undo" else step.kind
        lines.append(f"[{tag}] {step.label}: " + ", ".join(
            f"#{i} id{h.payload.get('person_id')}" for i, h in enumerate(step.ranking[: session.k], 1)))
        show(step)
        if session.pending is None and session.steps:
            log("No more questions: pick a candidate ('like #N but ...'), 'undo', 'new ...' or 'quit'.")
    log("bye")
    if transcript:
        Path(transcript).write_text("\n".join(lines) + "\n")
    return lines
