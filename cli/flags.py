"""Command-line flags generated from config dataclasses (torch-free: `lineup train stage1 --help` imports no torch).

A plain dataclass gives one flag per field; a config of sections (`finetune.config.TrainConfig`) gives one
argument group per section. A field `lora_r` is the flag `--lora-r` (names are unique across sections); an
absent flag sets nothing, so a recipe file's value or the default stands.
"""

from __future__ import annotations

import argparse
import dataclasses


def _sections(cls) -> dict[str, type]:
    """{section name: section dataclass} of a config of sections, else {"": cls}."""
    return cls.sections() if hasattr(cls, "sections") else {"": cls}


def add_config_args(parser: argparse.ArgumentParser, cls, skip: set[str], title: str) -> None:
    """One flag per field of `cls` (or of each of its sections) but those in `skip`, help from the metadata."""
    from finetune.config import flag

    for section, kind in _sections(cls).items():
        doc = (kind.__doc__ or "").strip().splitlines()[0].rstrip(".")
        group = parser.add_argument_group(f"{title}: {section} — {doc}" if section else title)
        for f in dataclasses.fields(kind):
            if f.name in skip:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kw = {"dest": f.name, "default": argparse.SUPPRESS,
                  "help": f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")}
            if isinstance(default, bool):
                group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
            elif isinstance(default, tuple):
                group.add_argument(flag(f.name), nargs="*", **kw)
            elif isinstance(default, (int, float)):
                group.add_argument(flag(f.name), type=type(default), **kw)
            else:
                group.add_argument(flag(f.name), **kw)


def config_overrides(cls, args: argparse.Namespace, skip: set[str]) -> dict:
    """{field: value} of the fields of `cls` the user set through the flags `add_config_args` generated (same
    `skip`): a field another flag shares a name with (e.g. `--quantization`) is the command's to pass."""
    return {f.name: getattr(args, f.name) for kind in _sections(cls).values() for f in dataclasses.fields(kind)
            if f.name not in skip and hasattr(args, f.name)}


# TrainConfig fields that `lineup train` sets from its own flags (--model, --world/--dataset, --out, --adapter,
# --quantization, --prompt-style) rather than from generated ones.
TRAIN_EXPLICIT = {"base_model", "data", "output_dir", "init_adapter", "quantization", "prompt_style"}
