"""Mixtures of experts: BTT-MoE (an MoE inside every linear layer) and the standard FFN MoE.

BTT-MoE (docs/design.md section 5). A Block Tensor-Train layer (theta = btt, A contracted first)
whose rank axis rho has exactly ``num_experts`` = E slices::

    z[n, b, g, d, f, r] = sum_a x[n, a, b, g] * A[a, g, d, f, r]          (first core)
    y[n, d, e, f]       = sum_{b, g, r in top_k(n)} gate[n, r] * z[n, b, g, d, f, r] * B[b, g, e, f, r]

Rank slice r of (A, B) is expert r: on its own it is a rank-1 BTT, i.e. a Monarch layer. A
router (a dense d_in x E map, zero at init) scores the experts per token; the top-k scores
are kept and turned into gates by a softmax over those k logits (``router_gate="topk"``, the
authors'; with k = 1 that gate is identically 1, so the router learns from the auxiliary loss
alone; ``"switch"`` keeps the chosen experts' probabilities under the softmax over all E, as the
Switch Transformer does, which gives the router the task's gradient at any k); the gate multiplies the
intermediate z[..., r] before the second core. Only the k active slices are computed: token /
expert assignments are sorted by expert and each expert runs its two small batched matmuls on
the tokens routed to it, so counted FLOPs and wall-clock both fall as top_k / num_experts.

Cost per token (``BTTMoELinear.flops_per_token``)::

    router:      2 * d_in * E
    each expert: 2 * (n_alpha*n_beta*n_gamma*n_delta*n_phi + n_beta*n_gamma*n_delta*n_epsilon*n_phi)
                 (padded sizes; the FLOPs of one Monarch layer of these sizes)
    total:       router + top_k * expert

Gating multiplies and the scatter-add back to token order are O(d) per assignment and, like the
bias, are not counted (``torch.utils.flop_counter.FlopCounterMode`` counts the same things).

muP (docs/design.md section 4): each core is initialized with the spectral scale of the rank-1
expert (the second core's fan-in uses n_rho = 1), so every expert alone has the scale of a
Monarch layer, and a gated sum of k experts (gates summing to 1) is no larger. Core learning
rates follow the same per-expert fans (``mup_lr_multipliers``); the router keeps the plain rate.

Auxiliary loss (``layer.aux_loss`` after each forward; ``aux_loss(model)`` averages over the MoE
layers of a model)::

    E * sum_e mean_prob_e * fraction_e  +  0.1 * mean_n logsumexp(logits_n)^2

with mean_prob the softmax over all E logits averaged over tokens and fraction_e the share of
the n * top_k assignments that went to expert e (1 when perfectly balanced).

The standard baseline, ``MoEFFN``, has E dense GELU FFN experts (w -> hidden_mult*w -> w, no
bias) behind the same router, gates and aux loss; ``moeify`` puts one in every transformer
feed-forward block that declares itself with ``is_ffn = True`` (as the pipeline's GPT MLP does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_positive_int
from .base import LOW_PRECISION, LayerCost, StructuredLinear, as_compute_dtype, autocast_dtype, plan_core
from .functional import crop_output, pad_input
from .mup import width_multiplier
from .plan import AxisSizes, EinsumPlan, make_plan
from .replace import ReplacedLayer, StructurizeSummary, set_submodule
from .theta import Theta

__all__ = ["BTTMoELinear", "MoEFFN", "Router", "Routing", "aux_loss", "moeify", "router_aux_loss",
           "Z_LOSS_WEIGHT", "ROUTER_INITS", "ROUTER_LRS", "ROUTER_GATES", "expert_stats"]

#: weight of the router z-loss inside each layer's aux loss
Z_LOSS_WEIGHT = 0.1
#: how a router starts: at zero (every token ties onto the same experts at step 0) or N(0, 1/d_in)
ROUTER_INITS = ("zero", "normal")
#: router learning rates: muP's width multiplier of its fan-in d_in ("mup"), or the plain lr
ROUTER_LRS = ("mup", "plain")
#: how the kept logits become gates: a softmax over the k kept logits ("topk", the authors'; sums
#: to 1, and is 1 at k = 1) or their probabilities under the softmax over all E ("switch")
ROUTER_GATES = ("topk", "switch")


def check_router_lr(router_lr: object, owner: str) -> str:
    if router_lr not in ROUTER_LRS:
        raise ValueError(f"{owner}: router_lr must be one of {ROUTER_LRS}, got {router_lr!r}")
    return str(router_lr)


def check_router_gate(router_gate: object, owner: str) -> str:
    if router_gate not in ROUTER_GATES:
        raise ValueError(f"{owner}: router_gate must be one of {ROUTER_GATES}, got {router_gate!r}")
    return str(router_gate)


def check_moe_args(num_experts: object, top_k: object, owner: str) -> tuple[int, int]:
    """(num_experts, top_k) if both are positive integers with top_k <= num_experts."""
    num_experts = check_positive_int(num_experts, "num_experts", owner)
    top_k = check_positive_int(top_k, "top_k", owner)
    if top_k > num_experts:
        raise ValueError(f"{owner}: top_k must be <= num_experts, got top_k={top_k} > num_experts={num_experts}")
    return num_experts, top_k


# --------------------------------------------------------------------------- routing
@dataclass
class Routing:
    """Per-token routing decision.

    expert: (n, k) chosen expert ids; gate: (n, k) the chosen experts' weights (``Router.gate``);
    logits: (n, E) raw router scores; aux: scalar auxiliary loss of this decision.
    """

    expert: Tensor
    gate: Tensor
    logits: Tensor
    aux: Tensor


def router_aux_loss(logits: Tensor, expert: Tensor, num_experts: int) -> Tensor:
    """Switch load balancing + 0.1 * z-loss for router ``logits`` (n, E) and top-k ``expert`` (n, k)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    mean_prob = torch.softmax(logits, dim=-1).mean(0)
    counts = torch.bincount(expert.reshape(-1), minlength=num_experts).to(dtype)
    fraction = counts / expert.numel()
    balance = num_experts * (mean_prob * fraction).sum()
    z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return balance + Z_LOSS_WEIGHT * z_loss


class Router(nn.Module):
    """Dense d_in x E scoring map (no bias) with top-k softmax gates; zero at init, or N(0, 1/d_in)
    with ``init="normal"`` (the authors' FFN-MoE router). ``gate="topk"``: a softmax over the k
    kept logits (gates sum to 1); ``"switch"``: the kept experts' probabilities under the softmax
    over all E (gates sum to at most 1; the only choice that trains the router at k = 1).

    Deliberately not an ``nn.Linear``, so ``structurize`` never replaces it; its learning rate is
    set by its MoE layer's ``mup_lr_multipliers`` (muP's width multiplier, or the plain lr).

    In training mode each forward keeps ``stats``: the share of the n * top_k assignments each
    expert got (E,), the mean entropy of the router's softmax (nats) and the auxiliary loss, as
    detached device tensors (nothing is read back; the expert diagnostics read them at log points).
    """

    def __init__(self, d_in: int, num_experts: int, top_k: int, *, init: str = "zero", gate: str = "topk",
                 device=None, dtype=None) -> None:
        super().__init__()
        if init not in ROUTER_INITS:
            raise ValueError(f"Router: init must be one of {ROUTER_INITS}, got {init!r}")
        self.num_experts, self.top_k, self.init = num_experts, top_k, init
        self.gate = check_router_gate(gate, "Router")
        self.weight = nn.Parameter(torch.zeros(num_experts, d_in, device=device, dtype=dtype))
        self.stats: dict[str, Tensor] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "zero":
            self.weight.zero_()
        else:
            self.weight.normal_(0.0, self.weight.shape[1] ** -0.5)

    def forward(self, x2: Tensor) -> Routing:
        """Route the rows of ``x2`` (n, d_in). With a low-precision input (under autocast) the
        logits are computed in float32 ("selective precision", as Switch Transformers do:
        routing decisions and the softmax are where low precision hurts); gates come back in
        ``x2``'s dtype."""
        if autocast_dtype(x2) is not None:  # called under autocast: decide in float32 all the same
            with torch.autocast(x2.device.type, enabled=False):
                logits = F.linear(x2.float(), self.weight.float())
        elif x2.dtype in LOW_PRECISION:
            logits = F.linear(x2.float(), self.weight.float())
        else:
            logits = F.linear(x2, self.weight)
        top_logits, expert = logits.topk(self.top_k, dim=-1)
        gate = gate_weights(logits, top_logits, expert, self.gate)
        aux = router_aux_loss(logits, expert, self.num_experts)
        if self.training and logits.shape[0] > 0:
            with torch.no_grad():
                probs = torch.softmax(logits.float(), dim=-1)
                counts = torch.bincount(expert.reshape(-1), minlength=self.num_experts).float()
                self.stats = {"load": counts / expert.numel(), "aux": aux.detach().float(),
                              "entropy": -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean()}
        return Routing(expert, gate.to(x2.dtype), logits, aux)

    def flops_per_token(self) -> int:
        return 2 * self.weight.shape[0] * self.weight.shape[1]

    def extra_repr(self) -> str:
        return (f"d_in={self.weight.shape[1]}, num_experts={self.num_experts}, top_k={self.top_k}"
                + ("" if self.gate == "topk" else f", gate={self.gate}"))


def gate_weights(logits: Tensor, top_logits: Tensor, expert: Tensor, kind: str) -> Tensor:
    """(n, k) gates of the chosen ``expert`` (n, k) from router ``logits`` (n, E) and their
    ``top_logits`` (n, k), in at least float32: ``"topk"`` a softmax over the k kept logits,
    ``"switch"`` the kept entries of the softmax over all E."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if kind == "switch":
        return torch.softmax(logits.to(dtype), dim=-1).gather(-1, expert)
    return torch.softmax(top_logits.to(dtype), dim=-1)


def _dispatch(routing: Routing) -> list[tuple[int, Tensor, Tensor]]:
    """Group the n * k token/expert assignments by expert (a stable sort by expert id).

    Returns one ``(expert, token indices, gates)`` triple per expert that received tokens.
    """
    num_experts = routing.logits.shape[-1]
    k = routing.expert.shape[-1]
    flat = routing.expert.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    gate = routing.gate.reshape(-1)[order]
    return [(e, t, g) for e, (t, g, m) in enumerate(zip(token.split(counts), gate.split(counts), counts)) if m]


class _Gather(torch.autograd.Function):
    """``x.index_select(dim, i)`` for each index set ``i``; the backward scatter-adds all of
    them into ONE gradient buffer (autograd would build a full-size zero tensor per set)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, indices: list[Tensor]):
        ctx.dim, ctx.indices, ctx.shape = dim, indices, x.shape
        return tuple(x.index_select(dim, i) for i in indices)

    @staticmethod
    def backward(ctx, *grads):
        out = grads[0].new_zeros(ctx.shape)
        for i, g in zip(ctx.indices, grads):
            out.index_add_(ctx.dim, i, g)
        return out, None, None


class _Scatter(torch.autograd.Function):
    """Sum of the ``pieces`` scattered along ``dim`` at their ``indices`` into zeros of ``shape``,
    in place into one buffer (no concatenation); the backward gathers."""

    @staticmethod
    def forward(ctx, shape: tuple[int, ...], dim: int, indices: list[Tensor], *pieces: Tensor) -> Tensor:
        ctx.dim, ctx.indices = dim, indices
        out = pieces[0].new_zeros(shape)
        for i, p in zip(indices, pieces):
            out.index_add_(dim, i, p)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, None, None, *(grad.index_select(ctx.dim, i) for i in ctx.indices))


def _gather(x: Tensor, dim: int, indices: list[Tensor]) -> tuple[Tensor, ...]:
    return _Gather.apply(x, dim, indices) if indices else ()


def _scatter(shape: tuple[int, ...], dim: int, indices: list[Tensor], pieces: list[Tensor], like: Tensor) -> Tensor:
    return _Scatter.apply(shape, dim, indices, *pieces) if pieces else like.new_zeros(shape)


class _Permuted(torch.autograd.Function):
    """``x.permute(dims).contiguous()`` whose gradient is contiguous too.

    Autograd's own backward of a permute hands the next matmul a strided gradient, and CPU
    ``bmm`` then copies it one small matrix at a time; one bulk copy is several times faster.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dims: tuple[int, ...]) -> Tensor:
        ctx.inverse = tuple(sorted(range(len(dims)), key=dims.__getitem__))
        return x.permute(dims).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.permute(ctx.inverse).contiguous(), None


def _permuted(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    return _Permuted.apply(x, dims)


class _HoldsAuxLoss:
    """``aux_loss`` holds the last forward's graph; copies and pickles drop it (a non-leaf
    tensor cannot be deep-copied, so ``copy.deepcopy(model)`` would fail after a forward)."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state = dict(state) if isinstance(state, dict) else dict(self.__dict__)
        state["aux_loss"] = None
        return state


# --------------------------------------------------------------------------- BTT-MoE
class BTTMoELinear(_HoldsAuxLoss, StructuredLinear):
    """A BTT layer whose rank axis is a mixture of ``num_experts`` experts, gated per token.

    Args:
        d_in, d_out: input and output widths (positive integers).
        num_experts: E, the size of the rank axis; each rank slice is one expert.
        top_k: experts active per token (1 <= top_k <= num_experts).
        bias: add a learnable bias of shape (d_out,).
        einsum_norm: divide a core whose RMS exceeds its init scale by RMS / init scale, with a
            learnable scalar gain per core (docs/design.md section 4).
        zero_init: start the second core (B) at zero, so the layer outputs zero at init.
        router_lr: ``"mup"`` (default): the router's learning rate follows muP like the dense
            layer it sits beside (lr x the width multiplier of its fan-in d_in), so a rate tuned
            at one width transfers; ``"plain"``: the base lr at every width.
        router_init: ``"zero"`` (default) or ``"normal"`` (N(0, 1/d_in)).
        router_gate: ``"topk"`` (default: softmax over the kept logits) or ``"switch"`` (``Router``).

    Shapes: input (..., d_in) -> output (..., d_out). ``core_a`` has axes (alpha, gamma, delta,
    phi, rho) and ``core_b`` (beta, gamma, epsilon, phi, rho), with rho of size E; the other
    sizes are those ``make_plan(Theta.btt(0), d_in, d_out)`` chooses (zero padding included).
    ``router.weight`` is (E, d_in). After each forward ``aux_loss`` holds this layer's
    auxiliary loss (a scalar tensor).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        num_experts: int,
        top_k: int = 2,
        bias: bool = True,
        *,
        einsum_norm: bool = False,
        zero_init: bool = False,
        router_lr: str = "mup",
        router_init: str = "zero",
        router_gate: str = "topk",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_in, d_out, bias=bias, einsum_norm=einsum_norm)
        self.num_experts, self.top_k = check_moe_args(num_experts, top_k, "BTTMoELinear")
        self.router_lr = check_router_lr(router_lr, "BTTMoELinear")
        #: plan of one expert (a rank-1 BTT, i.e. Monarch): sizes, padding and per-expert fans
        self.expert_plan: EinsumPlan = make_plan(Theta.btt(0.0), d_in, d_out)
        s = self.expert_plan.sizes
        self._sizes = AxisSizes(s.alpha, s.beta, s.gamma, s.delta, s.epsilon, s.phi, self.num_experts)
        self.zero_init = bool(zero_init)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}  # torch.empty/ones keywords
        E = self.num_experts
        self.core_a = nn.Parameter(torch.empty(s.alpha, s.gamma, s.delta, s.phi, E, **factory))
        self.core_b = nn.Parameter(torch.empty(s.beta, s.gamma, s.epsilon, s.phi, E, **factory))
        self._register_gains_and_bias(device, dtype)
        self.router = Router(d_in, E, self.top_k, init=router_init, gate=router_gate, **factory)
        self.aux_loss: Tensor | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------ basics
    @property
    def size_plan(self) -> EinsumPlan:
        return self.expert_plan

    @property
    def sizes(self) -> AxisSizes:
        """Axis sizes of the cores: the expert plan's, with rho = num_experts."""
        return self._sizes

    def fans(self, core: str) -> tuple[int, int]:
        """(fan_in, fan_out) of ``core_a`` / ``core_b`` for ONE expert (n_rho = 1), A first."""
        s = self.sizes
        if plan_core(core) == "A":
            return s.alpha, s.delta * s.phi
        return s.beta * s.gamma, s.epsilon

    def init_std(self, core: str) -> float:
        """Spectral init std of a core, per expert: sqrt(min(fan_in, fan_out)) / fan_in."""
        fan_in, fan_out = self.fans(core)
        return math.sqrt(min(fan_in, fan_out)) / fan_in

    def lr_multiplier(self, core: str) -> float:
        """Structure part of a core's Adam LR multiplier: (d_in / core fan-in) / 2."""
        return (self.d_in / self.fans(core)[0]) / 2

    def mup_lr_multipliers(self, base_width: int | None = None, width: int | None = None) -> dict[str, float]:
        """Per-parameter LR multipliers, read by ``einsearch.mup.param_groups``."""
        wm = width_multiplier(self.d_in, width, base_width)
        return {"core_a": self.lr_multiplier("core_a") * wm,
                "core_b": self.lr_multiplier("core_b") * wm,
                "router.weight": wm if self.router_lr == "mup" else 1.0}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.core_a.normal_(0.0, self.init_std("core_a"))
        self.core_b.normal_(0.0, self.init_std("core_b"))
        if self.zero_init:
            self.core_b.zero_()
        self._reset_gains_and_bias()
        self.router.reset_parameters()

    # ----------------------------------------------------------------- forward
    def _forward_2d(self, x2: Tensor) -> Tensor:
        if x2.is_meta:  # sizing without memory: routing needs values, the shape does not
            self.aux_loss = x2.new_zeros(())
            return x2.new_empty(x2.shape[0], self.d_out)
        routing = self.router(x2)
        self.aux_loss = routing.aux
        return crop_output(self._experts(pad_input(x2, self.expert_plan), _dispatch(routing)), self.expert_plan)

    def _experts(self, xp: Tensor, groups: list[tuple[int, Tensor, Tensor]]) -> Tensor:
        """(n, d_out_padded): the gated sum of the active experts, from ``_dispatch`` groups.

        Expert e is a rank-1 BTT run as two batched matmuls on contiguous operands:
        step 1 batches over gamma, (m*beta, alpha) @ (alpha, delta*phi); step 2 batches over
        phi, (m*delta, beta*gamma) @ (beta*gamma, epsilon). x is transposed to gamma-major
        once, tokens are gathered from it per expert, expert outputs are scattered into one
        phi-major buffer, and that is transposed back once.
        """
        s = self.sizes
        A, B, G, D, Eo, Fi = s.alpha, s.beta, s.gamma, s.delta, s.epsilon, s.phi
        n = xp.shape[0]
        a, b = self.effective_cores(xp)
        # (E, gamma, alpha, delta*phi) and (E, phi, beta*gamma, epsilon): one small copy each
        cores_a = a.permute(4, 1, 0, 2, 3).reshape(s.rho, G, A, D * Fi).unbind(0)
        cores_b = b.permute(4, 3, 0, 1, 2).reshape(s.rho, Fi, B * G, Eo).unbind(0)
        x_g = _permuted(xp.reshape(n, A, B, G), (3, 0, 2, 1)).reshape(G, n, B * A)
        tokens = [t for _, t, _ in groups]
        pieces = []
        for (e, _, gate), x_e in zip(groups, _gather(x_g, 1, tokens)):
            m = gate.shape[0]
            z = torch.bmm(x_e.reshape(G, m * B, A), cores_a[e]).reshape(G, m, B * D * Fi) * gate.reshape(1, m, 1)
            z = _permuted(z.reshape(G, m, B, D, Fi), (4, 1, 3, 2, 0)).reshape(Fi, m * D, B * G)
            pieces.append(torch.bmm(z, cores_b[e]).reshape(Fi, m, D * Eo))  # (phi, m, delta*epsilon)
        y = _scatter((Fi, n, D * Eo), 1, tokens, pieces, x_g)
        return _permuted(y.reshape(Fi, n, D, Eo), (1, 2, 3, 0)).reshape(n, D * Eo * Fi)

    # ---------------------------------------------------------- dense reference
    def expert_matrices(self, dtype: torch.dtype | None = None) -> Tensor:
        """(E, d_out, d_in): each rank slice (expert) materialized as a dense matrix."""
        a, b = self.effective_cores()
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        p = self.expert_plan
        w = torch.einsum("agdfr,bgefr->rdefabg", a, b).reshape(self.num_experts, p.d_out_padded, p.d_in_padded)
        return w[:, : self.d_out, : self.d_in]

    def dense_reference(self, x: Tensor) -> Tensor:
        """Float64 reference: y_n = sum over active experts e of gate_{n,e} * W_e x_n (+ bias).

        Routing is recomputed in float64 from the same router; every expert is a dense matrix.
        """
        lead = x.shape[:-1]
        x64 = x.reshape(-1, self.d_in).to(torch.float64)
        logits = x64 @ self.router.weight.to(torch.float64).T
        top_logits, expert = logits.topk(self.top_k, dim=-1)
        weights = torch.softmax(logits, -1).gather(1, expert) if self.router.gate == "switch" \
            else torch.softmax(top_logits, dim=-1)
        gates = torch.zeros_like(logits).scatter(1, expert, weights)
        y = torch.einsum("ne,eoi,ni->no", gates, self.expert_matrices(torch.float64), x64)
        if self.bias is not None:
            y = y + self.bias.to(torch.float64)
        return y.reshape(*lead, self.d_out)

    # -------------------------------------------------------------------- cost
    def expert_flops(self) -> int:
        """Forward FLOPs per token of one expert (a rank-1 BTT on the padded sizes)."""
        s = self.sizes
        return 2 * (s.alpha * s.beta * s.gamma * s.delta * s.phi + s.beta * s.gamma * s.delta * s.epsilon * s.phi)

    def flops_per_token(self) -> int:
        """Active forward FLOPs per token: router 2*d_in*E + top_k * expert FLOPs (bias excluded)."""
        return self.router.flops_per_token() + self.top_k * self.expert_flops()

    def cost(self) -> LayerCost:
        """Real per-token cost; ``core_params`` counts the cores and the router, ``flops`` is active."""
        weights = self.core_a.numel() + self.core_b.numel() + self.router.weight.numel()
        dense_params, dense_flops = self._dense_cost()
        return LayerCost(
            params=sum(p.numel() for p in self.parameters()),
            core_params=weights,
            flops=self.flops_per_token(),
            dense_params=dense_params,
            dense_flops=dense_flops,
        )

    def _repr_head(self) -> list[str]:
        return ([f"num_experts={self.num_experts}", f"top_k={self.top_k}", f"router_lr={self.router_lr}",
                 f"router_init={self.router.init}"]
                + ([] if self.router.gate == "topk" else [f"router_gate={self.router.gate}"]))

    def _repr_tail(self) -> list[str]:
        return ((["zero_init=True"] if self.zero_init else [])
                + [f"active_flops/token={self.flops_per_token():,}"])


# --------------------------------------------------------------------------- FFN MoE
class MoEFFN(_HoldsAuxLoss, nn.Module):
    """Standard MoE feed-forward block: E dense GELU experts w -> hidden_mult*w -> w, no bias.

    Args:
        width: input and output width w.
        num_experts, top_k: as for ``BTTMoELinear`` (same router, gates and aux loss).
        hidden_mult: hidden width of each expert is ``hidden_mult * width``.
        zero_init: start every expert's output projection at zero (last layer of a residual
            branch); ``moeify`` sets it when the MLP it replaces started at zero.
        router_lr: ``"mup"`` (default, the width multiplier of its fan-in) or ``"plain"``.
        router_init: ``"normal"`` (default, N(0, 1/width): tokens spread over the experts from
            step 0, as the authors' code re-initialises it) or ``"zero"`` (every token ties
            onto the same top-k experts at step 0).
        router_gate: ``"topk"`` (default) or ``"switch"`` (``Router``).

    ``w_fc`` is (E, w, h) and ``w_proj`` (E, h, w): expert e maps x to
    ``gelu(x @ w_fc[e]) @ w_proj[e]``; the block returns sum over the top-k experts of
    gate * expert(x). Only the active experts run.
    """

    def __init__(self, width: int, num_experts: int = 8, top_k: int = 2, hidden_mult: int = 4, *,
                 zero_init: bool = False, router_lr: str = "mup", router_init: str = "normal",
                 router_gate: str = "topk", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.width = check_positive_int(width, "width", "MoEFFN")
        self.router_lr = check_router_lr(router_lr, "MoEFFN")
        self.hidden_mult = check_positive_int(hidden_mult, "hidden_mult", "MoEFFN")
        self.num_experts, self.top_k = check_moe_args(num_experts, top_k, "MoEFFN")
        self.hidden = self.hidden_mult * self.width
        self.zero_init = bool(zero_init)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}  # torch.empty/ones keywords
        self.w_fc = nn.Parameter(torch.empty(self.num_experts, self.width, self.hidden, **factory))
        self.w_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden, self.width, **factory))
        self.router = Router(self.width, self.num_experts, self.top_k, init=router_init, gate=router_gate,
                             **factory)
        self.aux_loss: Tensor | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        w, h = self.width, self.hidden
        self.w_fc.normal_(0.0, math.sqrt(min(w, h)) / w)
        if self.zero_init:
            self.w_proj.zero_()
        else:
            self.w_proj.normal_(0.0, math.sqrt(min(w, h)) / h)
        self.router.reset_parameters()

    def mup_lr_multipliers(self, base_width: int | None = None, width: int | None = None) -> dict[str, float]:
        """muP width multipliers of the expert weights (fan-ins w and h) and, with router_lr
        ``"mup"``, of the router (fan-in w)."""
        wm = width_multiplier(self.width, width, base_width)
        return {"w_fc": wm, "w_proj": width_multiplier(self.hidden, width, base_width),
                "router.weight": wm if self.router_lr == "mup" else 1.0}

    def forward(self, x: Tensor) -> Tensor:
        """(..., width) -> (..., width). Under autocast the experts run in the autocast dtype
        (output in it, like an ``nn.Linear`` MLP), the router in float32."""
        if x.shape[-1] != self.width:
            raise ValueError(f"MoEFFN expected input of width {self.width} in its last dimension, "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.width)
        low = autocast_dtype(x2)
        if low is None:
            return self._forward_2d(x2).reshape(*lead, self.width)
        with torch.autocast(x2.device.type, enabled=False):
            return self._forward_2d(x2.to(low)).reshape(*lead, self.width)

    def _forward_2d(self, x2: Tensor) -> Tensor:
        if x2.is_meta:  # sizing without memory: routing needs values, the shape does not
            self.aux_loss = x2.new_zeros(())
            return x2.new_empty(x2.shape)
        routing = self.router(x2)
        self.aux_loss = routing.aux
        groups = _dispatch(routing)
        tokens = [t for _, t, _ in groups]
        # one gradient buffer each; cast (under autocast) before the split, once per forward
        w_fc, w_proj = as_compute_dtype(self.w_fc, x2).unbind(0), as_compute_dtype(self.w_proj, x2).unbind(0)
        pieces = [(F.gelu(x_e @ w_fc[e]) @ w_proj[e]) * gate.unsqueeze(-1)
                  for (e, _, gate), x_e in zip(groups, _gather(x2, 0, tokens))]
        return _scatter((x2.shape[0], self.width), 0, tokens, pieces, x2)

    def expert_flops(self) -> int:
        return 2 * 2 * self.width * self.hidden

    def flops_per_token(self) -> int:
        """Active forward FLOPs per token: router 2*w*E + top_k * 4*w*h."""
        return self.router.flops_per_token() + self.top_k * self.expert_flops()

    def extra_repr(self) -> str:
        return (f"width={self.width}, hidden={self.hidden}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"router_lr={self.router_lr}, router_init={self.router.init}"
                + ("" if self.router.gate == "topk" else f", router_gate={self.router.gate}")
                + (", zero_init=True" if self.zero_init else "")
                + f", active_flops/token={self.flops_per_token():,}")


# --------------------------------------------------------------------------- model level
_MOE_TYPES = (BTTMoELinear, MoEFFN)


def aux_loss(model: nn.Module) -> Tensor:
    """Mean of ``aux_loss`` over the MoE layers of ``model`` that have run a forward.

    A zero scalar when the model has none (on the device of its first parameter).
    """
    losses = [m.aux_loss for m in model.modules() if isinstance(m, _MOE_TYPES) and m.aux_loss is not None]
    if losses:
        dtype = torch.float64 if any(loss.dtype == torch.float64 for loss in losses) else torch.float32
        return torch.stack([loss.to(dtype) for loss in losses]).mean()
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)


def moeify(model: nn.Module, num_experts: int = 8, top_k: int = 2, *, router_lr: str = "mup",
           router_init: str = "normal", router_gate: str = "topk") -> StructurizeSummary:
    """Replace every feed-forward block of ``model`` (a module with ``is_ffn = True`` and dense
    ``fc`` / ``proj`` layers, like the GPT MLP of ``einsearch.search.models``) with ``MoEFFN``.

    The MLPs must still be dense (``nn.Linear`` fc and proj). Each ``MoEFFN`` keeps the MLP's
    width, hidden multiple, device and dtype, and zero-inits its output projections when the
    MLP's did. Returns a ``StructurizeSummary`` (params counted over all experts plus router;
    FLOPs per token are the active ones).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    num_experts, top_k = check_moe_args(num_experts, top_k, "moeify")
    check_router_gate(router_gate, "moeify")
    targets = [(name, m) for name, m in model.named_modules() if getattr(m, "is_ffn", False) is True]
    if not targets:
        raise ValueError(f"moeify: {type(model).__name__} has no feed-forward blocks "
                         "(modules with is_ffn = True and dense fc/proj layers) to replace")
    summary = StructurizeSummary(structure=f"moe(num_experts={num_experts}, top_k={top_k})")
    for name, mlp in targets:
        fc, proj = mlp.fc, mlp.proj
        if type(fc) is not nn.Linear or type(proj) is not nn.Linear:
            raise ValueError(f"moeify: {name} is not a dense MLP (fc={type(fc).__name__}, "
                             f"proj={type(proj).__name__}); call moeify on the dense GPT")
        width, hidden = fc.in_features, fc.out_features
        if hidden % width or proj.in_features != hidden or proj.out_features != width:
            raise ValueError(f"moeify: {name} has shape {width}->{hidden}->{proj.out_features}; "
                             "expected w -> m*w -> w")
        new = MoEFFN(width, num_experts, top_k, hidden // width,
                     zero_init=not proj.weight.is_meta and bool((proj.weight.detach() == 0).all()),
                     router_lr=router_lr, router_init=router_init, router_gate=router_gate,
                     device=fc.weight.device, dtype=fc.weight.dtype)
        set_submodule(model, name, new)
        summary.layers.append(ReplacedLayer(
            name=name, kind=type(mlp).__name__, d_in=width, d_out=width,
            params_before=2 * width * hidden, params_after=sum(p.numel() for p in new.parameters()),
            flops_before=4 * width * hidden, flops_after=new.flops_per_token(),
        ))
    return summary


def expert_stats(model: nn.Module) -> dict[str, Tensor]:
    """Routing of the last training forward of every MoE layer of ``model``, as detached device
    tensors keyed ``"<layer name>/<stat>"``: ``load`` (E,), the share of the n * top_k
    assignments each expert got (1/E each when balanced); ``top_share``, the largest of them;
    ``entropy``, the mean entropy (nats) of the router's softmax over experts (ln E: uniform);
    ``aux``, the layer's auxiliary loss. Empty before any training forward."""
    out: dict[str, Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, _MOE_TYPES) and m.router.stats:
            st = m.router.stats
            out[f"{name}/load"] = st["load"]
            out[f"{name}/top_share"] = st["load"].max()
            out[f"{name}/entropy"] = st["entropy"]
            out[f"{name}/aux"] = st["aux"]
    return out
