"""`lineup chat` driven through a real terminal (a pseudo-terminal): the CLI process on the tiny base and
adapter, a user typing a description, relevance feedback and filters, then Ctrl-C (SIGINT) and `--resume`."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _env import child_env

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on a pty: send lines, read what it prints (ANSI codes stripped)."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        env = child_env(COLUMNS="80", LINES="50", TERM="xterm", OMP_NUM_THREADS="1")
        # a shell starts background jobs with SIGINT ignored and children inherit that (Python then never raises
        # KeyboardInterrupt): the chat gets a terminal's default Ctrl-C whatever ran this suite
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", *argv], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=ROOT, env=env, close_fds=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(slave)
        self.text = ""
        self.pos = 0  # end of the last match: what one read brought in past it is still searched

    def expect(self, pattern: str, timeout: float = 300.0) -> str:
        """Read until ``pattern`` (a regex) appears in the output after the last match."""
        start, deadline = self.pos, time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.text[start:])
            if m:
                self.pos = start + m.end()
                return self.text[start:self.pos]
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    break
                self.text += ANSI.sub("", chunk.decode("utf-8", "replace")).replace("\r", "")
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"{pattern!r} not printed; output so far:\n{self.text[start:][-3000:]}")

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


@pytest.fixture(scope="module")
def project(tiny_gallery):
    """The flags that reach the shared indexed gallery (conftest `tiny_gallery`)."""
    return tiny_gallery["common"]


def test_chat_in_a_terminal_feedback_filters_interrupt_resume(project, tmp_path):
    transcript = tmp_path / "chat.txt"
    term = Terminal(["chat", *project, "--no-preview", "--transcript", str(transcript)])
    try:
        term.expect(r"Describe the person", timeout=600)  # the model loads first (slow on a shared CPU)
        term.send("a woman with long brown hair in a red coat and black trousers")
        table = term.expect(r"filters: none[\s\S]*?\?")  # the ranked table, then the next question
        asked = table.rsplit("\n", 1)[-1]
        for said in ("male or female", "long or short", "color is the person's hair"):
            assert said not in asked  # the description answered these
        term.send("#2 is close, not #3")
        term.expect(r"feedback: 1 like, 1 unlike")
        term.send("no hat")
        out = term.expect(r"filters: no hat[\s\S]*?\?")
        assert "│ 1 │" in out.replace("  ", " ") or re.search(r"│\s+1\s+│", out)
        term.send("red")  # not an option of the pending question? then a one-line hint
        term.send("drop the hat filter")
        term.expect(r"filters: none \| feedback: 1 like, 1 unlike")
        session = term.text[term.text.index("Describe the person"):]
        assert "does not answer" in session or "→ red" in session  # "red" was checked against the question
        tables = [line for line in session.splitlines() if set(line) & set("│┃┏┗└┌━─")]
        assert tables and max(len(line) for line in tables) <= 80  # every table fits the terminal
        term.proc.send_signal(signal.SIGINT)  # Ctrl-C
        term.expect(r"interrupted; the transcript is in")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    text = transcript.read_text()
    assert "you> #2 is close, not #3" in text and "you> no hat" in text

    term = Terminal(["chat", *project, "--no-preview", "--resume", str(transcript),
                     "--transcript", str(tmp_path / "again.txt")])
    try:
        term.expect(r"replayed \d+ inputs from[\s\S]*?same\s+ranking\s+as\s+recorded", timeout=600)  # rich wraps it
        term.expect(r"filters: none \| feedback: 1 like, 1 unlike")
        term.send("quit")
        term.expect(r"bye")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
