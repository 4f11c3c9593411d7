"""Terminal rendering: progress bars, tables, half-block image previews, contact sheets. Only `cli` uses rich."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar handed to library code as an `advance(n)` callback."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None, total: int | None = None) -> None:
            progress.advance(task, n)
            if info is not None or total is not None:
                progress.update(task, **{k: v for k, v in (("info", info), ("total", total)) if v is not None})

        yield advance


# table titles of the evaluation tasks (`retrieval.evaluate.evaluate_dataset`'s keys)
TASK_TITLES = {"t2i": "text → image", "i2i": "image → image (cross-camera)", "composed": "image + modification → image",
               "t2i_answers": "text → image, answer re-ranking",
               "composed_answers": "image + modification → image, answer re-ranking",
               "verify": "verification (same person?)", "noise": "NAM wrong-word detection"}

SHORT = {"accuracy": "acc", "precision": "prec", "recall": "rec", "threshold": "thr", "yes_rate": "yes rate",
         "exact_queries": "exact q"}


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """rows: {row name: {metric: value}} → one table, metric columns in first-seen order, short enough for an
    80-column terminal: counts that every row shares (queries, skipped), counts only one row has and text
    values (a threshold's source) go into the caption; long metric names are abbreviated (SHORT)."""
    columns: list[str] = []
    for metrics in rows.values():
        columns += [c for c in metrics if c not in columns]
    values = {c: [m[c] for m in rows.values() if c in m] for c in columns}
    notes, noted = [], set()
    for c in columns:
        vals = values[c]
        if all(isinstance(v, str) for v in vals) or (
                len(rows) > 1 and all(isinstance(v, int) and not isinstance(v, bool) for v in vals)
                and (len(set(vals)) == 1 or len(vals) == 1)):
            notes.append(f"{c.replace('_', ' ')} {vals[0]}" if len(set(vals)) == 1 else
                         ", ".join(f"{c.replace('_', ' ')} ({name}) {m[c]}" for name, m in rows.items() if c in m))
            noted.add(c)
    columns = [c for c in columns if c not in noted]
    table = Table(title=title, caption=" · ".join(notes) or None)
    table.add_column("")
    for c in columns:
        table.add_column(SHORT.get(c, c), justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(_fmt(metrics.get(c)) for c in columns))
    return table


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def halfblock(image: Image.Image | str | Path, width: int = 12) -> Text:
    """An image as coloured half-block characters: each cell shows two vertical pixels (▀, fg=top, bg=bottom)."""
    img = Image.open(image) if isinstance(image, (str, Path)) else image
    img = img.convert("RGB")
    height = max(2, round(img.height * width / img.width / 2) * 2)
    px = img.resize((width, height), Image.Resampling.BILINEAR).load()
    text = Text()
    for y in range(0, height, 2):
        for x in range(width):
            top, bottom = px[x, y], px[x, y + 1]
            text.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        if y + 2 < height:
            text.append("\n")
    return text


def preview_strip(paths: Sequence[str | Path], labels: Sequence[str], width: int = 8) -> Text:
    """The images side by side as half-block art, each labelled underneath: one compact block per result list."""
    blocks = [halfblock(p, width).split() for p in paths]
    height = max((len(b) for b in blocks), default=0)
    text = Text()
    for row in range(height):
        for i, block in enumerate(blocks):
            text.append_text(block[row] if row < len(block) else Text(" " * width))
            text.append(" ")
        text.append("\n")
    text.append(" ".join(f"{label:<{width}}"[:width] for label in labels))
    return text


def contact_sheet(paths: Sequence[str | Path], labels: Sequence[str], out: str | Path, cell=(64, 128)) -> Path:
    """A PNG grid of result images with a label under each."""
    w, h = cell
    cols = min(len(paths), 10) or 1
    rows = (len(paths) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * (h + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, label) in enumerate(zip(paths, labels)):
        x, y = (i % cols) * w, (i // cols) * (h + 14)
        sheet.paste(Image.open(path).convert("RGB").resize((w, h)), (x, y))
        draw.text((x + 2, y + h + 1), label, fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def show_hits(hits, title: str, preview: bool = True) -> None:
    """A ranked list of store hits as a table (rank, score, person, camera, image), with image previews."""
    table = Table(title=title)
    for col in ("#", "score", "person", "camera"):
        table.add_column(col, justify="right")
    table.add_column("image")
    for rank, hit in enumerate(hits, 1):
        p = hit.payload
        table.add_row(str(rank), f"{hit.score:.3f}", str(p.get("person_id", "?")), str(p.get("camera_id", "?")),
                      Path(p.get("image", "")).name)
    console.print(table)
    shown = [(i, h.payload["image"]) for i, h in enumerate(hits, 1) if Path(h.payload.get("image", "")).is_file()]
    if preview and shown:
        console.print(preview_strip([p for _, p in shown], [f"#{i}" for i, _ in shown]))
