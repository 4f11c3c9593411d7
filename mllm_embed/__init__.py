"""mllm_embed: one instruction MLLM embeds images, text and image+modification into one space."""

from mllm_embed.errors import LineupError

__all__ = ["LineupError"]
