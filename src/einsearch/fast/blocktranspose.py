"""The plain block-transpose candidate: the simplest BTT formulation, generalised to any theta.

For Monarch / BTT (x = (n, alpha, gamma), y = (n, epsilon, phi)) it is the textbook kernel:
transpose x to (gamma, n, alpha); one ``bmm`` with A as (gamma, alpha, phi*rho) into a reused
buffer; one contiguous copy to (phi, n, gamma*rho); one ``bmm`` with B as
(phi, gamma*rho, epsilon); transpose back to (n, epsilon, phi). The backward mirrors it.

In general (x = (n, a, b, g), y = (n, d, e, f), core ``C1`` contracted first over its input
axis ``p`` while ``q`` rides along; ``o1`` / ``o2`` the output axes each core produces)::

    x'  = (g, n, q, p)          copy of x          (saved for dC1)
    z1  = (g, n, q, o1, f, r)   bmm(x', C1 as (g, p, o1 f r))
    z2  = (f, n, o1, q, g, r)   copy of z1         (saved for dC2)
    y'  = (f, n, o1, o2)        bmm(z2, C2 as (f, q g r, o2))
    y   = (n, d, e, f)          copy of y'

with (p, q, o1, o2) = (a, b, d, e) when A goes first and (b, a, e, d) when B does. A copy
whose permutation keeps every axis of size > 1 in place is skipped (a view). Every activation,
intermediate and activation gradient lives in a pool buffer (``fast/buffers.py``). Applies to
every plan whose two cores both carry parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..functional import crop_output, pad_input
from ..plan import EinsumPlan
from .buffers import POOL

__all__ = ["run", "run_staged", "applies", "Layouts", "layouts"]


class Layouts:
    """Axis sizes and the layouts of every tensor of the formulation for one plan."""

    def __init__(self, plan: EinsumPlan, staged: bool = False) -> None:
        self.staged = staged
        s = plan.sizes
        self.size = {"a": s.alpha, "b": s.beta, "g": s.gamma, "d": s.delta, "e": s.epsilon,
                     "f": s.phi, "r": s.rho}
        self.a_first = plan.first == "A"
        p, q, o1, o2 = ("a", "b", "d", "e") if self.a_first else ("b", "a", "e", "d")
        self.p, self.q, self.o1, self.o2 = p, q, o1, o2
        self.x, self.y = "nabg", "ndef"
        self.xp = "gn" + q + p
        self.z1 = "gn" + q + o1 + "fr"
        self.z2 = "fn" + o1 + q + "gr"
        self.yp = "fn" + o1 + o2
        self.c1 = "agdfr" if self.a_first else "bgefr"  # natural axis orders of the cores
        self.c2 = "bgefr" if self.a_first else "agdfr"
        self.c1_3 = ("g", p, o1 + "fr")                 # as bmm operands (batch, K, N)
        self.c2_3 = ("f", q + "gr", o2)

    def dims(self, layout: str, n: int) -> list[int]:
        return [n if ax == "n" else self.size[ax] for ax in layout]

    def numel(self, axes: str, n: int = 1) -> int:
        return math.prod(self.dims(axes, n))

    def kept(self, layout: str) -> str:
        """``layout`` without its axes of size 1."""
        return "".join(ax for ax in layout if ax == "n" or self.size[ax] > 1)

    def is_view(self, src: str, dst: str) -> bool:
        """Whether ``src -> dst`` keeps every axis of size > 1 in order (no copy needed)."""
        return self.kept(src) == self.kept(dst)

    def path(self, src: str, dst: str) -> list[str]:
        """Layouts (size-1 axes dropped) a copy ``src -> dst`` goes through.

        Plain: one copy. Staged, when the innermost axis changes: move the token axis
        outermost keeping the innermost axis (contiguous chunks), transpose within each token
        (a block that stays in cache), then move the token axis into place keeping the new
        innermost axis. The planner times both variants; neither is assumed faster.
        """
        s, d = self.kept(src), self.kept(dst)
        if s == d:
            return [s]
        if not self.staged or s[-1] == d[-1] or "n" in (s[-1], d[-1]):
            return [s, d]
        steps = [s]
        for mid in ("n" + s.replace("n", ""), "n" + d.replace("n", ""), d):
            if mid != steps[-1]:
                steps.append(mid)
        return steps


_LAYOUTS: dict[tuple[EinsumPlan, bool], Layouts] = {}


def layouts(plan: EinsumPlan, staged: bool = False) -> Layouts:
    lay = _LAYOUTS.get((plan, staged))
    if lay is None:
        lay = _LAYOUTS[(plan, staged)] = Layouts(plan, staged)
    return lay


def applies(plan: EinsumPlan) -> bool:
    """Both cores carry parameters (a single-entry core is one plain GEMM, not this program)."""
    return not (plan.trivial_a or plan.trivial_b)


def _permute(t: Tensor, src: str, dst: str, lay: Layouts, n: int, out: Tensor | None = None) -> Tensor:
    """``t`` (contiguous in ``src``) as a contiguous tensor in ``dst``: a view when no axis of
    size > 1 moves, else copies (``lay.path``) into ``out`` or a pool buffer."""
    if lay.is_view(src, dst) and out is None:
        return t.view(lay.dims(dst, n))
    if out is None:
        out = POOL.empty(lay.dims(dst, n), t.dtype, t.device)
    path = lay.path(src, dst)
    if len(path) == 1:
        out.view(lay.dims(dst, n)).copy_(t.view(lay.dims(src, n)))
        return out
    for i, (s, d) in enumerate(zip(path[:-1], path[1:])):
        target = out if i == len(path) - 2 else POOL.empty(lay.dims(d, n), t.dtype, t.device)
        target.view(lay.dims(d, n)).copy_(t.view(lay.dims(s, n)).permute([s.index(ax) for ax in d]))
        t = target
    return out


def _core3(core: Tensor, natural: str, groups: tuple[str, str, str], lay: Layouts) -> Tensor:
    """A core (axes ``natural``) as a contiguous (batch, K, N) bmm operand."""
    target = "".join(groups)
    t = core.reshape(lay.dims(natural, 1)).permute([natural.index(ax) for ax in target])
    return t.reshape([lay.numel(g) for g in groups])


def _core_grad(g3: Tensor, natural: str, groups: tuple[str, str, str], lay: Layouts, shape) -> Tensor:
    target = "".join(groups)
    t = g3.reshape(lay.dims(target, 1)).permute([target.index(ax) for ax in natural])
    return t.reshape(shape)


class _Permute(torch.autograd.Function):
    """Differentiable copy of an activation from layout ``src`` to ``dst`` (a pool buffer);
    the backward is the same copy the other way round."""

    @staticmethod
    def forward(ctx, t: Tensor, src: str, dst: str, lay: Layouts, n: int):
        ctx.src, ctx.dst, ctx.lay, ctx.n, ctx.shape = src, dst, lay, n, t.shape
        out = POOL.empty(lay.dims(dst, n), t.dtype, t.device)
        return _permute(t.contiguous(), src, dst, lay, n, out=out)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _Permute.apply(g, ctx.dst, ctx.src, ctx.lay, ctx.n).view(ctx.shape), None, None, None, None


class _BlockTranspose(torch.autograd.Function):
    """x' (layout ``lay.xp``) -> y (n, d_out_padded); saves x' and z2, nothing is recomputed.

    Its input gradient is dx' in x''s layout (``_Permute``'s backward turns it into dx)."""

    @staticmethod
    def forward(ctx, xp: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan, n: int, lay: Layouts):
        c1, c2 = (a, b) if lay.a_first else (b, a)
        g, f = lay.size["g"], lay.size["f"]
        k1, n1 = lay.numel(lay.p), lay.numel(lay.c1_3[2])
        z1 = POOL.empty(lay.dims(lay.z1, n), xp.dtype, xp.device)
        torch.bmm(xp.reshape(g, -1, k1), _core3(c1, lay.c1, lay.c1_3, lay), out=z1.view(g, -1, n1))
        z2 = _permute(z1, lay.z1, lay.z2, lay, n)
        y = POOL.empty((n, plan.d_out_padded), xp.dtype, xp.device)  # a fresh tensor, not a view
        k2, n2 = lay.numel(lay.c2_3[1]), lay.numel(lay.o2)
        c2_3 = _core3(c2, lay.c2, lay.c2_3, lay)
        if lay.is_view(lay.yp, lay.y):
            torch.bmm(z2.view(f, -1, k2), c2_3, out=y.view(f, -1, n2))
        else:
            yp = POOL.empty(lay.dims(lay.yp, n), xp.dtype, xp.device)
            torch.bmm(z2.view(f, -1, k2), c2_3, out=yp.view(f, -1, n2))
            _permute(yp, lay.yp, lay.y, lay, n, out=y)
        ctx.save_for_backward(xp, a, b, z2)
        ctx.plan, ctx.n, ctx.lay = plan, n, lay
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        xp, a, b, z2 = ctx.saved_tensors
        plan, n, lay = ctx.plan, ctx.n, ctx.lay
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            with torch.enable_grad():
                x = xp.reshape(lay.dims(lay.xp, n)).permute([lay.xp.index(ax) for ax in lay.x]).reshape(n, -1)
                y = _padded_reference(x, a, b, plan)
                inputs = [t for t, need in zip((xp, a, b), (need_x, need_a, need_b)) if need]
                grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=True, allow_unused=True))
            return tuple(next(grads) if need else None for need in (need_x, need_a, need_b)) + (None, None, None)
        c1, c2 = (a, b) if lay.a_first else (b, a)
        need1, need2 = (need_a, need_b) if lay.a_first else (need_b, need_a)
        g, f = lay.size["g"], lay.size["f"]
        k1, n1 = lay.numel(lay.p), lay.numel(lay.c1_3[2])
        k2, n2 = lay.numel(lay.c2_3[1]), lay.numel(lay.o2)
        dyp = _permute(dy.contiguous(), lay.y, lay.yp, lay, n).view(f, -1, n2)
        z2_3 = z2.view(f, -1, k2)
        g1 = g2 = dxp = None
        if need2:  # dC2 (f, q g r, o2) = z2^T dy'
            g2 = _core_grad(torch.bmm(z2_3.mT, dyp), lay.c2, lay.c2_3, lay, c2.shape)
        if need1 or need_x:
            dz2 = POOL.empty(lay.dims(lay.z2, n), dy.dtype, dy.device)
            torch.bmm(dyp, _core3(c2, lay.c2, lay.c2_3, lay).mT, out=dz2.view(f, -1, k2))
            dz1 = _permute(dz2, lay.z2, lay.z1, lay, n).view(g, -1, n1)
            if need1:  # dC1 (g, p, o1 f r) = x'^T dz1
                g1 = _core_grad(torch.bmm(xp.reshape(g, -1, k1).mT, dz1), lay.c1, lay.c1_3, lay, c1.shape)
            if need_x:  # dx' = dz1 C1^T, in x''s layout and shape
                dxp = POOL.empty(xp.shape, dy.dtype, dy.device)
                torch.bmm(dz1, _core3(c1, lay.c1, lay.c1_3, lay).mT, out=dxp.view(g, -1, k1))
        ga, gb = (g1, g2) if lay.a_first else (g2, g1)
        return dxp, ga, gb, None, None, None


def _padded_reference(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """The two einsums on an already padded (n, d_in_padded) input; (n, d_out_padded) out."""
    s = plan.sizes
    n = x.shape[0]
    first, second = (a, b) if plan.first == "A" else (b, a)
    z = torch.einsum(plan.eq_first, x.reshape(n, s.alpha, s.beta, s.gamma), first)
    return torch.einsum(plan.eq_second, z, second).reshape(n, plan.d_out_padded)


def run(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan, staged: bool = False) -> Tensor:
    """(n, d_in) -> (n, d_out) through the block-transpose program (both cores non-trivial);
    ``staged``: copies that move the innermost axis go in cache-friendly steps (``Layouts.path``)."""
    lay = layouts(plan, staged)
    n = x.shape[0]
    xp = pad_input(x, plan)
    if lay.is_view(lay.x, lay.xp):
        xp = xp.contiguous().view(lay.dims(lay.xp, n))
    else:
        xp = _Permute.apply(xp, lay.x, lay.xp, lay, n)
    return crop_output(_BlockTranspose.apply(xp, a, b, plan, n, lay), plan)


def run_staged(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """``run`` with staged copies (a separate candidate for the planner)."""
    return run(x, a, b, plan, staged=True)
