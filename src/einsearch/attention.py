"""StructuredMultiheadAttention: ``nn.MultiheadAttention`` with four separate projection modules.

``nn.MultiheadAttention`` keeps its q/k/v projection as a raw ``in_proj_weight`` parameter and
its parents (its own forward, ``nn.TransformerEncoderLayer``'s fast path) read
``out_proj.weight`` directly, so none of its projections can be swapped for a structured layer.
This module computes the same function (same argument list, same return values, same masks)
from four modules ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``, each mapping
(..., d_in) -> (..., d_out): ``nn.Linear`` or any structured layer (``EinsumLinear``).

``StructuredMultiheadAttention.from_mha(mha)`` splits a built ``nn.MultiheadAttention`` into
dense ``nn.Linear`` projections carrying its weights (numerically the same function), which
``structurize`` then replaces like any other linear layer. ``to_mha()`` goes back when every
projection has a dense weight (``nn.Linear``, or a layer with ``to_dense()``).

torch's fused fast paths are never taken with this module: ``in_proj_weight`` and
``in_proj_bias`` are ``None`` and ``_qkv_same_embed_dim`` is ``False``, the attributes
``nn.TransformerEncoder``/``nn.TransformerEncoderLayer`` check before taking them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StructuredMultiheadAttention", "swap_attention", "disable_fused_paths"]

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _features(module: nn.Module) -> tuple[int | None, int | None]:
    """(in_features, out_features) of a linear-like module, None where it does not say."""
    d_in = getattr(module, "in_features", None)
    d_out = getattr(module, "out_features", None)
    return (d_in if isinstance(d_in, int) else None, d_out if isinstance(d_out, int) else None)


def _dense_weight(module: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """(weight (out, in), bias) of an nn.Linear or a layer with ``to_dense()``; None otherwise."""
    if isinstance(module, nn.Linear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    to_dense = getattr(module, "to_dense", None)
    if callable(to_dense):
        bias = getattr(module, "bias", None)
        return to_dense().detach(), None if bias is None else bias.detach()
    return None


class StructuredMultiheadAttention(nn.Module):
    """Multi-head attention as ``nn.MultiheadAttention`` computes it, with separate projections.

    Args (as ``nn.MultiheadAttention``):
        embed_dim: model width E (query width and output width).
        num_heads: H; E must be divisible by H (head width D = E / H).
        dropout: dropout probability on the attention weights (training mode only).
        bias: biases on the four default projections.
        add_bias_kv: learnable (1, 1, E) biases appended to the key and value sequences.
        add_zero_attn: append a zero key and value (after the projections).
        kdim, vdim: key and value input widths (default E).
        batch_first: inputs and outputs are (N, L, E) instead of (L, N, E).
        q_proj, k_proj, v_proj, out_proj: the projections, modules mapping (..., E) -> (..., E),
            (..., kdim) -> (..., E), (..., vdim) -> (..., E) and (..., E) -> (..., E).
            Default: ``nn.Linear`` (Xavier-uniform weights, zero biases, like
            ``nn.MultiheadAttention``).
    """

    # torch's fused paths check these before reading packed weights; None/False turns them off
    in_proj_weight: None = None
    in_proj_bias: None = None
    _qkv_same_embed_dim = False

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    out_proj: nn.Module
    bias_k: nn.Parameter | None
    bias_v: nn.Parameter | None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        q_proj: nn.Module | None = None,
        k_proj: nn.Module | None = None,
        v_proj: nn.Module | None = None,
        out_proj: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"StructuredMultiheadAttention: {arg} must be a positive integer, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"StructuredMultiheadAttention: embed_dim={embed_dim} must be divisible by "
                             f"num_heads={num_heads}")
        for arg, width in (("kdim", kdim), ("vdim", vdim)):
            if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width <= 0):
                raise ValueError(f"StructuredMultiheadAttention: {arg} must be a positive integer or None, "
                                 f"got {width!r}")
        if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout <= 1.0):
            raise ValueError(f"StructuredMultiheadAttention: dropout must be a probability in [0, 1], got {dropout!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim: int = kdim if kdim is not None else embed_dim
        self.vdim: int = vdim if vdim is not None else embed_dim
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.add_zero_attn = bool(add_zero_attn)
        shapes = {"q_proj": (embed_dim, embed_dim), "k_proj": (self.kdim, embed_dim),
                  "v_proj": (self.vdim, embed_dim), "out_proj": (embed_dim, embed_dim)}
        given = {"q_proj": q_proj, "k_proj": k_proj, "v_proj": v_proj, "out_proj": out_proj}
        for name, (d_in, d_out) in shapes.items():
            module = given[name]
            if module is None:
                module = nn.Linear(d_in, d_out, bias=bias, device=device, dtype=dtype)
                with torch.no_grad():
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        module.bias.zero_()
            elif not isinstance(module, nn.Module):
                raise TypeError(f"StructuredMultiheadAttention: {name} must be an nn.Module, "
                                f"got {type(module).__name__}")
            else:
                got_in, got_out = _features(module)
                if (got_in is not None and got_in != d_in) or (got_out is not None and got_out != d_out):
                    raise ValueError(f"StructuredMultiheadAttention: {name} must map {d_in} -> {d_out} features, "
                                     f"got {type(module).__name__} with {got_in} -> {got_out}")
            setattr(self, name, module)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, device=device, dtype=dtype))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, device=device, dtype=dtype))
            with torch.no_grad():
                nn.init.xavier_normal_(self.bias_k)
                nn.init.xavier_normal_(self.bias_v)
        else:
            self.bias_k = self.bias_v = None

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "StructuredMultiheadAttention":
        """The same attention as ``mha`` with dense ``nn.Linear`` projections holding its weights.

        Copies (not shares) every parameter; dtype, device and train/eval mode follow ``mha``.
        Hooks registered on ``mha`` are not carried over.

        Raises:
            TypeError: ``mha`` is not an ``nn.MultiheadAttention``, or a subclass that overrides
                ``forward`` (its function is not known here).
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"from_mha: mha must be an nn.MultiheadAttention, got {type(mha).__name__}")
        if type(mha).forward is not nn.MultiheadAttention.forward:
            raise TypeError(f"from_mha: {type(mha).__name__} overrides nn.MultiheadAttention.forward, so "
                            "its function is not known; it cannot be split into projections")
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3)
        else:
            w_q, w_k, w_v = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        if mha.in_proj_bias is not None:
            b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3)
        else:
            b_q = b_k = b_v = None
        out = mha.out_proj

        def linear(w: Tensor, b: Tensor | None) -> nn.Linear:
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            return layer

        new = cls(
            e, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
            add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn,
            kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first,
            q_proj=linear(w_q, b_q), k_proj=linear(w_k, b_k), v_proj=linear(w_v, b_v),
            out_proj=linear(out.weight.detach(), None if out.bias is None else out.bias.detach()),
            device=w_q.device, dtype=w_q.dtype,
        )
        if mha.bias_k is not None and mha.bias_v is not None and new.bias_k is not None and new.bias_v is not None:
            with torch.no_grad():
                new.bias_k.copy_(mha.bias_k)
                new.bias_v.copy_(mha.bias_v)
        new.train(mha.training)
        return new

    def dense_reason(self) -> str | None:
        """Why ``to_mha`` cannot rebuild an ``nn.MultiheadAttention``; None when it can."""
        for name in _PROJECTIONS:
            if _dense_weight(getattr(self, name)) is None:
                return f"{name} ({type(getattr(self, name)).__name__}) has no dense weight (no to_dense())"
        biases = [getattr(self, n).bias is not None for n in _PROJECTIONS]
        if len(set(biases)) != 1:
            return "nn.MultiheadAttention has one bias flag for all four projections; these differ"
        return None

    @torch.no_grad()
    def to_mha(self) -> nn.MultiheadAttention:
        """An ``nn.MultiheadAttention`` with the materialised projection weights (for export).

        Raises:
            ValueError: a projection has no dense weight (e.g. a BTT-MoE layer), or the
                projections disagree on having a bias (see ``dense_reason``).
        """
        reason = self.dense_reason()
        if reason is not None:
            raise ValueError(f"to_mha: cannot rebuild nn.MultiheadAttention: {reason}")
        dense = [_dense_weight(getattr(self, n)) for n in _PROJECTIONS]
        (w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o) = (d for d in dense if d is not None)
        mha = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=b_q is not None,
            add_bias_kv=self.bias_k is not None, add_zero_attn=self.add_zero_attn,
            kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first, device=w_q.device, dtype=w_q.dtype)
        values: dict[str, Tensor] = {"out_proj.weight": w_o}
        if mha._qkv_same_embed_dim:
            values["in_proj_weight"] = torch.cat([w_q, w_k, w_v])
        else:
            values.update(q_proj_weight=w_q, k_proj_weight=w_k, v_proj_weight=w_v)
        if b_q is not None and b_k is not None and b_v is not None and b_o is not None:
            values.update({"in_proj_bias": torch.cat([b_q, b_k, b_v]), "out_proj.bias": b_o})
        if self.bias_k is not None and self.bias_v is not None:
            values.update(bias_k=self.bias_k, bias_v=self.bias_v)
        for name, value in values.items():
            mha.get_parameter(name).copy_(value)
        mha.train(self.training)
        return mha

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention output and (optionally) weights, exactly as ``nn.MultiheadAttention``.

        Shapes (batch_first=False; swap the first two axes for batch_first=True; unbatched
        inputs drop the N axis): query (L, N, E), key (S, N, kdim), value (S, N, vdim),
        key_padding_mask (N, S), attn_mask (L, S) or (N * H, L, S), bool (True = masked out)
        or float (added to the scores). Returns the output (L, N, E) and, with
        ``need_weights``, the weights (N, L, S) averaged over heads or (N, H, L, S).

        ``is_causal`` is a hint that ``attn_mask`` is the causal mask, as in torch; unlike
        ``nn.MultiheadAttention``, ``is_causal=True`` without ``attn_mask`` is accepted and
        means the causal mask.
        """
        batched = query.dim() == 3
        self._check_shapes(query, key, value, key_padding_mask, attn_mask, batched)
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # now (N, L, E), (N, S, kdim), (N, S, vdim)
        n, tgt_len, _ = query.shape
        src_len = key.shape[1]
        dtype = query.dtype
        kpm = _additive_mask(key_padding_mask, "key_padding_mask", dtype)
        if is_causal and attn_mask is None and (kpm is not None or need_weights):
            attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=query.device).triu(1)
        if is_causal and kpm is None and not need_weights:
            mask = None  # torch trusts the hint and lets SDPA apply the causal mask
        else:
            mask = _additive_mask(attn_mask, "attn_mask", dtype)
            is_causal = is_causal and kpm is None
            if mask is not None:  # (1, 1, L, S) or (N, H, L, S)
                mask = mask.view(1, 1, tgt_len, src_len) if mask.dim() == 2 else mask.view(
                    n, self.num_heads, tgt_len, src_len)
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, self.embed_dim)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, self.embed_dim)], dim=1)
            mask = None if mask is None else F.pad(mask, (0, 1))
            kpm = None if kpm is None else F.pad(kpm, (0, 1))
        h, d = self.num_heads, self.head_dim
        q = q.view(n, tgt_len, h, d).transpose(1, 2)
        k = k.view(n, k.shape[1], h, d).transpose(1, 2)
        v = v.view(n, v.shape[1], h, d).transpose(1, 2)
        if self.add_zero_attn:
            zeros = torch.zeros(n, h, 1, d, dtype=k.dtype, device=k.device)
            k = torch.cat([k, zeros], dim=2)
            v = torch.cat([v, zeros], dim=2)
            mask = None if mask is None else F.pad(mask, (0, 1))
            kpm = None if kpm is None else F.pad(kpm, (0, 1))
        if kpm is not None:
            kpm = kpm.view(n, 1, 1, -1)
            mask = kpm if mask is None else mask + kpm
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt_len, self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _check_shapes(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                      attn_mask: Tensor | None, batched: bool) -> None:
        where = "StructuredMultiheadAttention"
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"{where}: query, key and value must all be 3-D (batched) or 2-D (unbatched), "
                             f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        for arg, x, width in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if x.shape[-1] != width:
                raise ValueError(f"{where}: {arg} must have width {width} in its last dimension, "
                                 f"got shape {tuple(x.shape)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"{where}: key and value must agree in sequence and batch dimensions, "
                             f"got {tuple(key.shape)} and {tuple(value.shape)}")
        batch_axis = 0 if self.batch_first else 1
        n = query.shape[batch_axis] if batched else 1
        seq_axis = 1 - batch_axis if batched else 0
        tgt_len, src_len = query.shape[seq_axis], key.shape[seq_axis]
        if batched and key.shape[batch_axis] != n:
            raise ValueError(f"{where}: query and key must have the same batch size, "
                             f"got {tuple(query.shape)} and {tuple(key.shape)} (batch_first={self.batch_first})")
        if key_padding_mask is not None:
            want = (n, src_len) if batched else (src_len,)
            if tuple(key_padding_mask.shape) != want:
                raise ValueError(f"{where}: key_padding_mask must have shape {want}, "
                                 f"got {tuple(key_padding_mask.shape)}")
        if attn_mask is not None:
            shapes = [(tgt_len, src_len), (n * self.num_heads, tgt_len, src_len)]
            if tuple(attn_mask.shape) not in shapes:
                raise ValueError(f"{where}: attn_mask must have shape (L, S) = {shapes[0]} or "
                                 f"(N * num_heads, L, S) = {shapes[1]}, got {tuple(attn_mask.shape)}")

    def extra_repr(self) -> str:
        extras = [f"embed_dim={self.embed_dim}", f"num_heads={self.num_heads}"]
        if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
            extras.append(f"kdim={self.kdim}, vdim={self.vdim}")
        if self.dropout:
            extras.append(f"dropout={self.dropout}")
        if self.bias_k is not None:
            extras.append("add_bias_kv=True")
        if self.add_zero_attn:
            extras.append("add_zero_attn=True")
        extras.append(f"batch_first={self.batch_first}")
        return ", ".join(extras)


def _additive_mask(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (True = masked out) as 0 / -inf in ``dtype``; a float mask as is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"StructuredMultiheadAttention: {name} must be a bool or floating-point tensor, "
                        f"got dtype {mask.dtype}")
    return mask


def swap_attention(model: nn.Module, pick: Callable[[str, nn.Module], bool]) -> tuple[list[str], dict[str, str]]:
    """Replace each ``nn.MultiheadAttention`` of ``model`` that has a projection ``pick`` wants.

    The candidate names are ``<attention>.q_proj``, ``.k_proj``, ``.v_proj`` and ``.out_proj``
    (the names the projections have after the swap); ``pick(name, module)`` sees the dense
    ``nn.Linear`` each would be. The replacement is ``StructuredMultiheadAttention.from_mha``,
    the same function. Returns (names of the swapped attentions, {projection name: why not}
    for attentions that could not be swapped).
    """
    swapped: list[str] = []
    reasons: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if type(module) is StructuredMultiheadAttention or not isinstance(module, nn.MultiheadAttention):
            continue
        try:
            new = StructuredMultiheadAttention.from_mha(module)
        except TypeError as err:
            for proj in _PROJECTIONS:
                reasons[f"{name}.{proj}" if name else proj] = str(err)
            continue
        if not any(pick(f"{name}.{proj}" if name else proj, getattr(new, proj)) for proj in _PROJECTIONS):
            continue
        if not name:
            for proj in _PROJECTIONS:
                reasons[proj] = ("the model itself is an nn.MultiheadAttention, which cannot be swapped in "
                                 "place: convert it with StructuredMultiheadAttention.from_mha first")
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        swapped.append(name)
    return swapped, reasons


def disable_fused_paths(model: nn.Module, changed: Iterable[str]) -> list[str]:
    """Turn off torch's fused transformer paths above changed modules; returns what was done.

    ``nn.TransformerEncoderLayer`` (eval mode, no grad) and ``nn.TransformerEncoder`` (nested
    tensors with a padding mask) read ``linear1.weight``, ``self_attn.in_proj_weight`` and
    friends directly; with a structured layer there they would fail. Setting the flags their
    own checks read (``activation_relu_or_gelu = 0``, ``use_nested_tensor = False``) sends
    them down their ordinary path, which calls the submodules; the function is unchanged.
    """
    changed = list(changed)
    done: list[str] = []

    def above(name: str) -> bool:
        return any(c == name or c.startswith(name + ".") or not name for c in changed)

    for name, module in model.named_modules():
        label = name or "<model>"
        if isinstance(module, nn.TransformerEncoderLayer) and module.activation_relu_or_gelu and above(name):
            module.activation_relu_or_gelu = 0
            done.append(f"{label}: fused fast path off (activation_relu_or_gelu = 0)")
        if isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False) and above(name):
            module.use_nested_tensor = False
            done.append(f"{label}: nested-tensor fast path off (use_nested_tensor = False)")
    return done
