"""The packages stay layered, without import circles, and `lineup --help` stays light.

Layers, bottom to top (docs/CONTRACTS.md): mllm_embed → finetune.data → retrieval → finetune (training) →
cli → benchmarks. A module imports only from its own layer or below; training reaches into retrieval only for its
pure metrics and evaluation protocols; rich is the CLI's. Every import counts, also the ones inside functions.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _env import child_env

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mllm_embed", "finetune", "retrieval", "cli", "benchmarks")
LAYERS = ("mllm_embed", "finetune.data", "retrieval", "finetune", "cli", "benchmarks")
# what training may use of retrieval: pure numpy metrics, the evaluation protocols and the bank answerer (no Qdrant)
TRAINING_MAY_USE = ("retrieval.metrics", "retrieval.evaluate", "retrieval.judge")
UI_LIBRARIES = ("rich",)
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "qdrant_edge", "qdrant_client", "bitsandbytes")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` imports (module level and inside functions), as dotted names; `from pkg import x`
    counts as `pkg.x` when that is a module of ours, else as `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    return out


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    files = {module_name(p, root): p for pkg in packages if (root / pkg).is_dir()
             for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def layer_of(module: str) -> str | None:
    """The deepest layer prefix of `module`, None for third-party modules."""
    hits = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return max(hits, key=len) if hits else None


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up the layers, into a layer it may not use, or at a UI library outside cli."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    out = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if there is None:
                if target.split(".")[0] in UI_LIBRARIES and here not in ("cli", "benchmarks"):
                    out.append(f"{module} imports {target}: only cli renders")
                continue
            if rank[there] > rank[here]:
                out.append(f"{module} ({here}) imports {target} ({there}): a lower layer imports a higher one")
            elif here == "finetune" and there == "retrieval" and not target.startswith(TRAINING_MAY_USE):
                out.append(f"{module} imports {target}: training uses only {', '.join(TRAINING_MAY_USE)}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles among our modules: strongly connected components with more than one module (or a
    module importing itself), each as a sorted list (Tarjan, iterative)."""
    ours = {m: sorted(t for t in targets if t in graph) for m, targets in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for start in sorted(ours):
        if start in index:
            continue
        work = [(start, iter(ours[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(ours[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in ours[node]:
                    found.append(sorted(component))
    return found


# ---------------------------------------------------------------- the project itself

def test_layers_point_down():
    assert violations(import_graph()) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_retrieval_uses_only_the_data_layer_of_finetune():
    graph = import_graph()
    reach = {(m, t) for m, targets in graph.items() if m.startswith("retrieval") for t in targets
             if t.startswith("finetune")}
    assert reach and all(t.startswith("finetune.data") for _, t in reach), sorted(reach)


# ---------------------------------------------------------------- the checker catches what it should

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path)


def test_a_planted_upward_import_inside_a_function_is_caught(tmp_path):
    graph = _package(tmp_path, {
        "mllm_embed/__init__.py": "",
        "mllm_embed/tiny.py": "def build():\n    from finetune.data.world import ATTRIBUTES\n    return ATTRIBUTES\n",
        "finetune/__init__.py": "", "finetune/data/__init__.py": "", "finetune/data/world.py": "ATTRIBUTES = {}\n",
        "retrieval/__init__.py": "",
        "retrieval/evaluate.py": "def noise():\n    from finetune import nam\n    from .metrics import roc_auc\n",
        "retrieval/metrics.py": "import numpy\n", "finetune/nam.py": "from retrieval.metrics import roc_auc\n",
        "finetune/train.py": "from retrieval.store import open_store\n", "retrieval/store.py": "",
        "retrieval/thi.py": "import rich\n",
    })
    assert graph["retrieval.evaluate"] >= {"finetune.nam", "retrieval.metrics"}
    found = violations(graph)
    assert any(v.startswith("mllm_embed.tiny (mllm_embed) imports finetune.data.world") for v in found), found
    assert any(v.startswith("retrieval.evaluate (retrieval) imports finetune.nam (finetune)") for v in found)
    assert any(v.startswith("finetune.train imports retrieval.store: training uses only") for v in found)
    assert any(v.startswith("retrieval.thi imports rich") for v in found)
    assert not any(v.startswith(("finetune.nam", "retrieval.metrics")) for v in found), found


def test_a_planted_circle_is_caught():
    graph = {"cli.main": {"cli.commands", "argparse"}, "cli.commands": {"cli.demo", "cli.ui"},
             "cli.demo": {"cli.main"}, "cli.ui": {"rich"}, "cli.chat": {"cli.chat"}, "mllm_embed": set()}
    assert sorted(cycles(graph)) == [["cli.chat"], ["cli.commands", "cli.demo", "cli.main"]]
    graph["cli.demo"] = {"cli.ui"}
    graph["cli.chat"] = set()
    assert cycles(graph) == []


# ---------------------------------------------------------------- help without the heavy libraries

def _subcommands() -> list[str]:
    tree = ast.parse((ROOT / "cli" / "main.py").read_text())
    return [node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "add_parser" and node.args
            and isinstance(node.args[0], ast.Constant)]


HELP_PROBE = """
import sys, time, traceback

class Refuse:  # a heavy import fails at once, naming the chain of our files that asked for it
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy}:
            chain = [f"{{f.filename.rpartition('{root}/')[2]}}:{{f.lineno}}" for f in traceback.extract_stack()
                     if f.filename.startswith('{root}/')]
            raise ImportError(name + " imported by " + " <- ".join(reversed(chain)))

sys.meta_path.insert(0, Refuse())
started = time.process_time()
try:
    from cli.main import main
    main(sys.argv[1:])
except SystemExit:
    pass
except ImportError as err:
    print(repr(("heavy", str(err))))
    sys.exit()
print(repr(("ok", time.process_time() - started)))
"""


@pytest.mark.parametrize("command", ["", *_subcommands()])
def test_help_does_not_import_the_heavy_libraries(command):
    argv = [*command.split(), "--help"]
    env = child_env()
    probe = HELP_PROBE.format(heavy=set(HEAVY), root=ROOT)
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    outcome, detail = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    if outcome == "heavy" and "finetune/train.py" in detail and not (ROOT / "finetune" / "config.py").exists():
        pytest.xfail("train's flags come from finetune.train (torch) until the configs move to finetune/config.py")
    assert outcome == "ok", f"`lineup {' '.join(argv)}`: {detail}"
    assert detail < 1.0, f"`lineup {' '.join(argv)}` took {detail:.2f} s of CPU"


def test_the_help_probe_names_a_heavy_import():
    env = child_env()
    probe = HELP_PROBE.format(heavy=set(HEAVY), root=ROOT).replace("from cli.main import main",
                                                                   "from mllm_embed import load_embedder as main")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    outcome, detail = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert outcome == "heavy" and detail.startswith("torch imported by mllm_embed/embedder.py:"), detail
    assert " <- mllm_embed/__init__.py:" in detail  # the whole chain, innermost first


# ---------------------------------------------------------------- texts name commands and flags that exist

QUOTED = re.compile(r"`(lineup [^`]*)`|\((lineup [a-z][^)]*)\)")  # `lineup x` or (lineup x)


def _strings(path: Path):
    """Every string literal of a module, f-strings with their fields as a placeholder `X`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    joined_parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in joined_parts:
            yield node.value


def quoted_commands() -> list[tuple[str, str]]:
    """(where, command) for every `lineup ...` in backquotes in our code's strings and in README."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found += [(str(path.relative_to(ROOT)), "".join(cmd)) for text in _strings(path)
                      for cmd in QUOTED.findall(text)]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    texts = ["".join(cmd) for cmd in QUOTED.findall(readme)]
    for block in re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S):
        texts += [line.strip().split(" #")[0] for line in block.replace("\\\n", " ").splitlines()
                  if line.strip().startswith("lineup ")]
    # usage notation: [optional] parts are checked too, `a|b` alternatives each, `&&` joins two commands
    for text in texts:
        for cmd in re.sub(r"[\[\]]", " ", text.replace("\\|", "|")).split("&&"):
            found.append(("README.md", " ".join(w for w in cmd.split() if w != "|")))
    return found


def unknown_parts(command: str, parser) -> list[str]:
    """The words of `command` the parser would refuse: an unknown subcommand or flag, a positional word the
    subcommand does not take or outside its choices (flag values are not checked)."""
    import argparse

    words = command.split()[1:]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if words and not words[0].startswith("-"):
        if words[0] not in sub.choices:
            return [words[0]]
        parser, words = sub.choices[words[0]], words[1:]
    flags = parser._option_string_actions
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    bad, takes_value = [], False
    for word in words:
        if "|" in word and not takes_value:  # alternatives: a positional's choices, or flags
            bad += [w for w in word.split("|") if w.startswith("-") and w not in flags
                    or not w.startswith("-") and positionals and positionals[0].choices
                    and w not in positionals[0].choices]
            if not word.startswith("-") and positionals:
                positionals.pop(0)
            continue
        if word.startswith("-"):
            action = flags.get(word.split("=")[0])
            if action is None:
                bad.append(word)
            takes_value = action is not None and action.nargs != 0 and "=" not in word
        elif takes_value:
            takes_value = False
        elif positionals:
            action = positionals.pop(0)
            if action.choices and word not in action.choices:
                bad.append(word)
        else:
            bad.append(word)
    return bad


def error_flags() -> list[tuple[str, str]]:
    """(where, flag) for every --flag named in a `raise LineupError(...)` message of our packages."""
    found = []
    for pkg in PACKAGES[:-1]:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                        and getattr(node.exc.func, "id", None) == "LineupError":
                    texts = [n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant)
                             and isinstance(n.value, str)]
                    found += [(str(path.relative_to(ROOT)), flag) for text in texts
                              for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text)]
    return found


def test_every_flag_an_error_names_exists():
    import argparse

    from cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = set(parser._option_string_actions).union(*(p._option_string_actions for p in sub.choices.values()))
    named = error_flags()
    assert len(named) > 20
    assert [(where, flag) for where, flag in named if flag not in known] == []


def test_every_quoted_lineup_command_exists():
    from cli.main import build_parser

    quoted = quoted_commands()
    assert len(quoted) > 20  # the scan finds the commands errors and README name
    parser = build_parser()
    wrong = [(where, cmd, bad) for where, cmd in quoted if (bad := unknown_parts(cmd, parser))]
    assert wrong == []


def test_the_text_checker_catches_a_command_that_does_not_exist():
    from cli.main import build_parser

    parser = build_parser()
    assert unknown_parts("lineup world --out X --force", parser) == []
    assert unknown_parts("lineup train stage2 --epochs 2", parser) == []
    assert unknown_parts("lineup world generate --out X", parser) == ["generate"]
    assert unknown_parts("lineup train stage3", parser) == ["stage3"]
    assert unknown_parts("lineup train stage1|stage3", parser) == ["stage3"]
    assert unknown_parts("lineup generate", parser) == ["generate"]
    assert unknown_parts("lineup index --vqa-cahce", parser) == ["--vqa-cahce"]
    assert ["".join(m) for m in QUOTED.findall("render a world first (lineup world generate)")] == \
        ["lineup world generate"]
