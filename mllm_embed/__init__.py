"""mllm_embed: one instruction MLLM embeds images, text and image+modification into one space."""

from mllm_embed.config import EmbedderConfig, resolve_dtype
from mllm_embed.embedder import MLLMEmbedder, load_embedder
from mllm_embed.errors import LineupError
from mllm_embed.families import list_families

__all__ = ["EmbedderConfig", "LineupError", "MLLMEmbedder", "list_families", "load_embedder", "resolve_dtype"]
