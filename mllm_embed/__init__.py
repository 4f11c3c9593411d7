"""mllm_embed: one instruction MLLM embeds images, text and image+modification into one space.

The names below load on first use (PEP 562), so `from mllm_embed.errors import LineupError` or
`mllm_embed.files` do not import torch: `lineup --help` stays fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EmbedderConfig": "mllm_embed.config",
    "resolve_dtype": "mllm_embed.config",
    "MLLMEmbedder": "mllm_embed.embedder",
    "load_embedder": "mllm_embed.embedder",
    "LineupError": "mllm_embed.errors",
    "list_families": "mllm_embed.families",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mllm_embed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
