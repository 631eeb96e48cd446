"""Model families used by the tasks: a residual MLP student and a small character GPT."""

from .gpt import GPT, gpt_heads
from .mlp import ResidualMLP, spectral_init_

__all__ = ["GPT", "ResidualMLP", "gpt_heads", "spectral_init_"]
