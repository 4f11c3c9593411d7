"""README's demo tables from a demo report: `lineup demo` writes PROJECT/reports/demo.json; its committed copy is
benchmarks/results/demo.json.

    python benchmarks/demo_tables.py [benchmarks/results/demo.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.ui import TASK_TITLES, metrics_table  # noqa: E402

NOTES = {"composed": " (identity level; exact image: exact_*)"}


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "demo.json")
    report = json.loads(path.read_text())
    console = Console(width=100, color_system=None)
    for task in ("t2i", "i2i", "composed"):
        # "+ answers": the same queries with answer re-ranking (SearchEngine.answer_weight) on cached answers
        rows = {label: {k: v for k, v in report["eval"][name][key].items() if not k.startswith("exact_R@")
                        or k == "exact_R@10"}
                for name in ("base", "stage1", "stage2")
                for key, label in ((task, name), (f"{task}_answers", f"{name} + answers"))
                if key in report["eval"][name]}
        console.print(metrics_table(TASK_TITLES[task] + NOTES.get(task, ""), rows))
    console.print(metrics_table("THI rounds (stage 2; simulated user, MLLM-cached answers)",
                                {f"round {m['round']}": {k: v for k, v in m.items() if k != "round"}
                                 for m in report["thi"]}))
    console.print(f"{report['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
