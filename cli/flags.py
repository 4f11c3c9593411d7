"""Command-line flags generated from config dataclasses: one flag per field, help from its metadata."""

from __future__ import annotations

import argparse
import dataclasses


def add_dataclass_args(group, cls, skip: set[str]) -> None:
    """One flag per dataclass field, help from its metadata; absent flags keep the dataclass default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: {default})")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, tuple):
            group.add_argument(flag, nargs="+", **kw)
        elif isinstance(default, (int, float)):
            group.add_argument(flag, type=type(default), **kw)
        else:
            group.add_argument(flag, **kw)


def dataclass_overrides(cls, args: argparse.Namespace, skip: set[str]) -> dict:
    """The fields of `cls` the user set through the flags `add_dataclass_args` generated (the same `skip`):
    a field that another flag shares a name with (e.g. `--quantization`) is the command's to pass."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and hasattr(args, f.name)}


# TrainConfig fields that `lineup train` sets from its own flags (--model, --world/--dataset, --out, --adapter,
# --quantization, --prompt-style) rather than from generated ones.
TRAIN_EXPLICIT = {"base_model", "data", "output_dir", "init_adapter", "quantization", "prompt_style"}
