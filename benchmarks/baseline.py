"""The plain block-transpose BTT kernel, written here independently of einsearch (a baseline).

For Monarch / BTT plans (x = (n, alpha, gamma), y = (n, epsilon, phi), core A first):

    forward:  x -> (gamma, n, alpha)                     one copy into a preallocated buffer
              bmm with A as (gamma, alpha, phi*rho)       into a preallocated buffer
              -> (phi, n, gamma*rho)                      one contiguous copy
              bmm with B as (phi, gamma*rho, epsilon)     into a preallocated buffer
              -> (n, epsilon, phi)                        transpose back (copy)
    backward: the mirror image (dy transposed, dB, dz, dz copied, dA, dx', dx transposed back).

Every buffer belongs to the module and is reused on every call (the fastest simple version: a
benchmark runs one forward + backward at a time, so nothing saved is overwritten early; a
library cannot assume that). Only block plans (gamma, phi > 1) with beta = delta = 1 and A first apply.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from einsearch.plan import EinsumPlan


def applies(plan: EinsumPlan) -> bool:
    s = plan.sizes
    return (plan.first == "A" and s.beta == 1 and s.delta == 1 and s.gamma > 1 and s.phi > 1
            and not plan.trivial_a and not plan.trivial_b and not plan.is_padded)


class _Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, mod: "BlockTransposeBTT"):
        s = mod.plan.sizes
        n = x.shape[0]
        al, g, e, f, r = s.alpha, s.gamma, s.epsilon, s.phi, s.rho
        buf = mod.buffers(n, x.dtype)
        a3 = a.reshape(al, g, f, r).permute(1, 0, 2, 3).reshape(g, al, f * r)
        b3 = b.reshape(g, e, f, r).permute(2, 0, 3, 1).reshape(f, g * r, e)
        buf["xt"].copy_(x.view(n, al, g).permute(2, 0, 1))
        torch.bmm(buf["xt"], a3, out=buf["z"])
        buf["z2"].view(f, n, g, r).copy_(buf["z"].view(g, n, f, r).permute(2, 1, 0, 3))
        torch.bmm(buf["z2"], b3, out=buf["yt"])
        y = buf["y"]
        y.view(n, e, f).copy_(buf["yt"].permute(1, 2, 0))
        ctx.mod, ctx.n = mod, n
        ctx.save_for_backward(a3, b3)
        return y.view(n, e * f)

    @staticmethod
    def backward(ctx, dy: Tensor):
        mod, n = ctx.mod, ctx.n
        a3, b3 = ctx.saved_tensors
        s = mod.plan.sizes
        al, g, e, f, r = s.alpha, s.gamma, s.epsilon, s.phi, s.rho
        buf = mod.buffers(n, dy.dtype)
        buf["dyt"].copy_(dy.reshape(n, e, f).permute(2, 0, 1))
        db3 = torch.bmm(buf["z2"].mT, buf["dyt"])
        torch.bmm(buf["dyt"], b3.mT, out=buf["dz"])
        buf["dz1"].view(g, n, f, r).copy_(buf["dz"].view(f, n, g, r).permute(2, 1, 0, 3))
        da3 = torch.bmm(buf["xt"].mT, buf["dz1"])
        torch.bmm(buf["dz1"], a3.mT, out=buf["dxt"])
        buf["dx"].view(n, al, g).copy_(buf["dxt"].permute(1, 2, 0))
        da = da3.reshape(g, al, f, r).permute(1, 0, 2, 3).reshape(mod.plan.shape_a)
        db = db3.reshape(f, g, r, e).permute(1, 3, 0, 2).reshape(mod.plan.shape_b)
        return buf["dx"], da, db, None


class BlockTransposeBTT(nn.Module):
    """y = x W^T for a Monarch / BTT plan through the plain block-transpose kernel (bench only)."""

    def __init__(self, plan: EinsumPlan, a: Tensor, b: Tensor) -> None:
        super().__init__()
        if not applies(plan):
            raise ValueError(f"the block-transpose baseline needs beta = delta = 1 and A first, got {plan.describe()}")
        self.plan = plan
        self.a = nn.Parameter(a.detach().clone())
        self.b = nn.Parameter(b.detach().clone())
        self._buf: dict = {}

    def buffers(self, n: int, dtype: torch.dtype) -> dict[str, Tensor]:
        key = (n, dtype)
        if self._buf.get("key") != key:
            s = self.plan.sizes
            al, g, e, f, r = s.alpha, s.gamma, s.epsilon, s.phi, s.rho
            shapes = {"xt": (g, n, al), "z": (g, n, f * r), "z2": (f, n, g * r), "yt": (f, n, e), "y": (n, e * f),
                      "dyt": (f, n, e), "dz": (f, n, g * r), "dz1": (g, n, f * r), "dxt": (g, n, al),
                      "dx": (n, al * g)}
            self._buf = {k: torch.zeros(v, dtype=dtype) for k, v in shapes.items()}  # zeros: touch every page
            self._buf["key"] = key
        return self._buf

    def forward(self, x: Tensor) -> Tensor:
        return _Fn.apply(x, self.a, self.b, self)
