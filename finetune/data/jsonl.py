"""The one JSON-lines reader and writer."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mllm_embed.errors import LineupError


def read_jsonl(path: str | Path, missing: str = "run `lineup world` to create it") -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); a missing file or a broken line is a LineupError naming
    it, `missing` tells the user how to get the file."""
    path = Path(path)
    if not path.is_file():
        raise LineupError(f"{path}: not found — {missing}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LineupError(f"{path.name}: line {n} is not valid JSON ({e.msg})") from e
    return rows


def jsonl_line(row: Any, **dumps) -> str:
    """One row as a JSON line (with its newline); `dumps` go to json.dumps (e.g. default=float)."""
    return json.dumps(row, **dumps) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Any], role: str = "output", **dumps) -> Path:
    """Write `rows` as JSON lines, atomically (a reader never sees half a file; a failed write keeps the old
    one). `role` names the path in errors (e.g. "--out")."""
    from mllm_embed.files import atomic_output

    with atomic_output(path, role) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(jsonl_line(r, **dumps) for r in rows)
    return Path(path)


def append_jsonl(path: str | Path, row: Any, **dumps) -> None:
    """Append one row to a JSON-lines log (e.g. training metrics), creating the file."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(jsonl_line(row, **dumps))
