"""A small nanoGPT-shaped character language model (docs/design.md section 6).

    tokens (B, T) -> token embedding + learned position embedding
                  -> depth x pre-LN block:  h = h + Attention(LN(h));  h = h + MLP(LN(h))
                  -> final LayerNorm -> readout Linear(w -> vocab)  (zero init, not tied)

Attention uses separate q/k/v/o projections, heads of size 64 (``n_head = width // 64``, one
head when width < 64), QK-LayerNorm (a LayerNorm over each head's query and key vectors;
``qk_norm=False`` drops it) and
``F.scaled_dot_product_attention(is_causal=True)``. The MLP is Linear(w -> 4w), GELU,
Linear(4w -> w). There are no biases anywhere. The last layer of every residual branch
(``attn.o`` and ``mlp.proj``) and the readout start at zero, so the logits are 0 at init (loss
= ln(vocab)). Every linear layer except the readout is meant to be structured. With
``depth_mup`` each residual branch is scaled by sqrt(3 / depth).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch._checks import check_positive_int

from .mlp import spectral_init_

__all__ = ["GPT", "GPTBlock", "CausalSelfAttention", "gpt_heads", "D_HEAD"]

D_HEAD = 64


def gpt_heads(width: int, d_head: int = D_HEAD) -> int:
    """Number of heads for ``width``: width // d_head, or 1 head of size width when width < d_head."""
    check_positive_int(width, "width", "GPT")
    if width < d_head:
        return 1
    if width % d_head:
        raise ValueError(
            f"GPT width must be a multiple of the head size {d_head} (or smaller than {d_head}, "
            f"for a single head), got width={width}"
        )
    return width // d_head


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, n_head: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.n_head = n_head
        self.d_head = width // n_head
        self.q = spectral_init_(nn.Linear(width, width, bias=False))
        self.k = spectral_init_(nn.Linear(width, width, bias=False))
        self.v = spectral_init_(nn.Linear(width, width, bias=False))
        self.o = spectral_init_(nn.Linear(width, width, bias=False), zero=True)
        self.q_norm: nn.Module = nn.LayerNorm(self.d_head, bias=False) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.d_head, bias=False) if qk_norm else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        B, T, W = h.shape
        # (B, T, W) -> (B, n_head, T, d_head)
        q = self.q(h).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = self.k(h).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        v = self.v(h).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, W))


class MLP(nn.Module):
    """The GELU feed-forward block ``fc -> GELU -> proj`` (w -> 4w -> w).

    ``is_ffn = True`` declares it a feed-forward block, so ``einsearch.moeify`` can swap it for
    an FFN mixture of experts without knowing this class.
    """

    is_ffn = True

    def __init__(self, width: int, expansion: int = 4) -> None:
        super().__init__()
        self.fc = spectral_init_(nn.Linear(width, expansion * width, bias=False))
        self.proj = spectral_init_(nn.Linear(expansion * width, width, bias=False), zero=True)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(h)))


class GPTBlock(nn.Module):
    def __init__(self, width: int, n_head: int, *, branch_scale: float = 1.0, qk_norm: bool = True) -> None:
        super().__init__()
        self.branch_scale = branch_scale
        self.attn_norm = nn.LayerNorm(width, bias=False)
        self.attn = CausalSelfAttention(width, n_head, qk_norm)
        self.mlp_norm = nn.LayerNorm(width, bias=False)
        self.mlp = MLP(width)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.branch_scale * self.attn(self.attn_norm(h))
        return h + self.branch_scale * self.mlp(self.mlp_norm(h))

    def extra_repr(self) -> str:
        return f"branch_scale={self.branch_scale:g}" if self.branch_scale != 1.0 else ""


class GPT(nn.Module):
    """Character-level GPT. Input token ids (B, T) with T <= block_size -> logits (B, T, vocab_size).

    Args:
        width: residual width (``model.width``), a multiple of 64 or smaller than 64.
        vocab_size: number of token ids (96 for the charlm task).
        block_size: longest sequence (size of the position embedding).
        depth: number of transformer blocks.
        depth_mup: scale every residual branch by sqrt(3 / depth) (depth-muP, as the authors'
            GPT does), so the residual stream's growth does not depend on the depth.
        qk_norm: LayerNorm over each head's queries and keys (default on).
    """

    def __init__(self, width: int, *, vocab_size: int = 96, block_size: int = 128, depth: int = 4,
                 depth_mup: bool = False, qk_norm: bool = True) -> None:
        super().__init__()
        n_head = gpt_heads(width)
        for field, value in (("vocab_size", vocab_size), ("block_size", block_size), ("depth", depth)):
            check_positive_int(value, field, "GPT")
        self.width = width
        self.depth = depth
        self.n_head = n_head
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(block_size, width)
        # unit-variance sum of the two embeddings (muP input layer: O(1) entries)
        nn.init.normal_(self.tok_emb.weight, std=2**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=2**-0.5)
        scale = math.sqrt(3.0 / depth) if depth_mup else 1.0
        self.blocks = nn.ModuleList(GPTBlock(width, n_head, branch_scale=scale, qk_norm=qk_norm) for _ in range(depth))
        self.norm = nn.LayerNorm(width, bias=False)
        self.readout = spectral_init_(nn.Linear(width, vocab_size, bias=False), zero=True)

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"GPT: sequence length {T} exceeds block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        h = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            h = block(h)
        return self.readout(self.norm(h))

    @staticmethod
    def is_structured_linear(name: str, module: nn.Module) -> bool:
        """Every linear layer except the readout."""
        return isinstance(module, nn.Linear) and name != "readout"
