"""Project a dense weight onto a structure: the cores of the nearest structured matrix.

For fixed (gamma, phi), the block of W with output indices (delta, epsilon) and input
indices (alpha, beta) is ``sum_rho A[alpha, gamma, delta, phi, rho] B[beta, gamma, epsilon,
phi, rho]``: rearranged with rows (alpha, delta) and columns (beta, epsilon) it has rank <=
n_rho (the Van Loan-Pitsianis rearrangement). The (gamma, phi) blocks partition W and each
block is set by its own slice of the cores, so the nearest structured matrix in Frobenius
norm is the rank-n_rho truncated SVD of every rearranged block, sqrt(s) split to each core
(docs/design.md section 7). This is exact and optimal for every plan that does not pad, and
contains the truncated SVD (low rank), Van Loan's nearest Kronecker product and the Monarch
projection (square or not, any block shape) as special cases.

A padded plan (input zero-padded, output cropped) only constrains the unpadded d_out x d_in
entries: it starts from the projection of the zero-padded weight and runs alternating
least-squares sweeps over the cores (each sweep solves each core exactly given the other, so
the error never rises). That optimum is not certified global.

With calibration inputs X (n, d_in) the objective is the layer's output error
``||(W - W_hat) X^T||_F = ||(W - W_hat) S^{1/2}||_F``, S = X^T X / n (see ``project_cores``
for when this is solved exactly).

This module imports only torch, numpy-free helpers and einsearch's plan/functional/theta
modules, so layers, convert and fit may import it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .functional import materialize
from .plan import EinsumPlan

__all__ = ["ProjectionResult", "project_cores"]

log = logging.getLogger(__name__)

_CG_ITERS = 30


@dataclass(frozen=True)
class ProjectionResult:
    """Cores of the projection and how good it is.

    Attributes:
        core_a: shape ``plan.shape_a`` (alpha, gamma, delta, phi, rho); raw, no norm gains.
        core_b: shape ``plan.shape_b`` (beta, gamma, epsilon, phi, rho).
        relative_error: ||W - W_hat||_F / ||W||_F, or with calibration the output error
            ||(W - W_hat) X^T||_F / ||W X^T||_F (0 when the denominator is 0).
        method: ``"svd"`` (closed form), ``"svd+als"`` (padded plan) or ``"data-aware"``.
        exact: True when the result is a certified global optimum of its objective.
        seconds: wall-clock time of the projection.
    """

    core_a: Tensor
    core_b: Tensor
    relative_error: float
    method: str
    exact: bool
    seconds: float


# ---------------------------------------------------------------- layout helpers
def _blocks(w_pad: Tensor, plan: EinsumPlan) -> Tensor:
    """(d_out_padded, d_in_padded) -> (gamma*phi, alpha*delta, beta*epsilon) rearranged blocks."""
    s = plan.sizes
    w6 = w_pad.reshape(s.delta, s.epsilon, s.phi, s.alpha, s.beta, s.gamma)
    return w6.permute(5, 2, 3, 0, 4, 1).reshape(s.gamma * s.phi, s.alpha * s.delta, s.beta * s.epsilon)


def _cores_from_factors(u: Tensor, v: Tensor, plan: EinsumPlan) -> tuple[Tensor, Tensor]:
    """Block factors u (P, alpha*delta, rho), v (P, beta*epsilon, rho) -> cores A, B."""
    s = plan.sizes
    a = u.reshape(s.gamma, s.phi, s.alpha, s.delta, s.rho).permute(2, 0, 3, 1, 4)
    b = v.reshape(s.gamma, s.phi, s.beta, s.epsilon, s.rho).permute(2, 0, 3, 1, 4)
    return a.contiguous(), b.contiguous()


def _factors_from_cores(a: Tensor, b: Tensor, plan: EinsumPlan) -> tuple[Tensor, Tensor]:
    s = plan.sizes
    p = s.gamma * s.phi
    u = a.permute(1, 3, 0, 2, 4).reshape(p, s.alpha * s.delta, s.rho)
    v = b.permute(1, 3, 0, 2, 4).reshape(p, s.beta * s.epsilon, s.rho)
    return u, v


def _pad(w: Tensor, plan: EinsumPlan) -> Tensor:
    out = w.new_zeros(plan.d_out_padded, plan.d_in_padded)
    out[: plan.d_out, : plan.d_in] = w
    return out


def _truncated_svd(m: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors (u sqrt(s), v sqrt(s)) of a batch of matrices (P, m, n)."""
    u, sv, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(rank, sv.shape[-1])
    root = sv[:, :k].sqrt().unsqueeze(1)
    uf, vf = u[:, :, :k] * root, vh[:, :k, :].transpose(1, 2) * root
    if k < rank:  # more rank than the block has: the extra components are zero
        uf = torch.nn.functional.pad(uf, (0, rank - k))
        vf = torch.nn.functional.pad(vf, (0, rank - k))
    return uf, vf


def _svd_project(w_pad: Tensor, plan: EinsumPlan) -> tuple[Tensor, Tensor]:
    u, v = _truncated_svd(_blocks(w_pad, plan), plan.sizes.rho)
    return _cores_from_factors(u, v, plan)


def _fold_trivial(a: Tensor, b: Tensor, plan: EinsumPlan) -> tuple[Tensor, Tensor]:
    """A single-entry core is the constant 1 in the layer: move its value into the other core."""
    if plan.trivial_a and plan.trivial_b:
        return torch.ones_like(a), torch.ones_like(b)  # the layer is y = x; nothing to choose
    if plan.trivial_a:
        return torch.ones_like(a), b * a.reshape(())
    if plan.trivial_b:
        return a * b.reshape(()), torch.ones_like(b)
    return a, b


# ------------------------------------------------------------ padded plans: ALS
def _masked_solve(m: Tensor, mask: Tensor, other: Tensor) -> Tensor:
    """Rows x of each block minimising sum_j mask_ij (m_ij - x_i . other_j)^2, exactly.

    m, mask: (P, rows, cols); other: (P, cols, r). Normal equations per row, solved with a
    pseudo-inverse (a row with no fitted entry gets 0; rank-deficient systems the min-norm
    solution), so the objective cannot rise.
    """
    p, cols, r = other.shape
    outer = (other.unsqueeze(-1) * other.unsqueeze(-2)).reshape(p, cols, r * r)
    gram = torch.bmm(mask, outer).reshape(p, m.shape[1], r, r)
    rhs = torch.bmm(mask * m, other).unsqueeze(-1)
    return (torch.linalg.pinv(gram, hermitian=True) @ rhs).squeeze(-1)


def _als_padded(w: Tensor, plan: EinsumPlan, a: Tensor, b: Tensor, sweeps: int,
                restarts: int) -> tuple[Tensor, Tensor]:
    """Alternating exact least squares on the unpadded entries, from cores (a, b) and restarts.

    Blocks are independent problems, so every block keeps its best run: the warm start
    (a, b) or one of ``restarts`` seeded random starts (the masked problem is not convex;
    restarts escape a poor basin the warm start falls into).
    """
    m = _blocks(_pad(w, plan), plan)
    mask = _blocks(_pad(torch.ones_like(w), plan), plan)
    u, v = _als_run(m, mask, *_factors_from_cores(a, b, plan), sweeps, plan)
    best = _block_err(m, mask, u, v)
    gen = torch.Generator(device="cpu").manual_seed(0)
    scale_u, scale_v = u.pow(2).mean().sqrt(), v.pow(2).mean().sqrt()
    for _ in range(restarts):
        u0 = u if plan.trivial_a else torch.randn(u.shape, generator=gen, dtype=u.dtype).to(u.device) * scale_u
        v0 = v if plan.trivial_b else torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device) * scale_v
        ur, vr = _als_run(m, mask, u0, v0, sweeps, plan)
        err = _block_err(m, mask, ur, vr)
        better = (err < best)[:, None, None]
        u, v, best = torch.where(better, ur, u), torch.where(better, vr, v), torch.minimum(err, best)
    return _cores_from_factors(_balance(u, v), _balance_v(u, v), plan)


def _als_run(m: Tensor, mask: Tensor, u: Tensor, v: Tensor, sweeps: int,
             plan: EinsumPlan) -> tuple[Tensor, Tensor]:
    """ALS sweeps: each core solved exactly given the other, then a line-search extrapolation
    along the sweep's step (kept only if it lowers the error: the usual cure for ALS's slow
    "swamps"). The error never rises.
    """
    err = _masked_err(m, mask, u, v)
    for sweep in range(1, sweeps + 1):
        u0, v0, before = u, v, err
        if not plan.trivial_a:
            u = _masked_solve(m, mask, v)
        if not plan.trivial_b:
            v = _masked_solve(m.transpose(1, 2), mask.transpose(1, 2), u)
        err = _masked_err(m, mask, u, v)
        if err > before:  # rounding only: keep the better point
            u, v, err = u0, v0, before
        step = sweep ** (1 / 3)
        u_x, v_x = u + step * (u - u0), v + step * (v - v0)
        err_x = _masked_err(m, mask, u_x, v_x)
        if err_x < err:
            u, v, err = u_x, v_x, err_x
        if before - err <= 1e-12 * before:
            break
    return u, v


def _block_err(m: Tensor, mask: Tensor, u: Tensor, v: Tensor) -> Tensor:
    return (mask * (m - u @ v.transpose(1, 2))).pow(2).sum(dim=(1, 2))


def _masked_err(m: Tensor, mask: Tensor, u: Tensor, v: Tensor) -> float:
    return float(_block_err(m, mask, u, v).sum())


def _scales(u: Tensor, v: Tensor) -> Tensor:
    """Per (block, rank) factor c with ||u c|| = ||v / c|| (same matrix, balanced cores)."""
    nu, nv = u.norm(dim=1, keepdim=True), v.norm(dim=1, keepdim=True)
    ok = (nu > 0) & (nv > 0)
    return torch.where(ok, (nv / torch.where(ok, nu, 1)).sqrt(), torch.ones_like(nu))


def _balance(u: Tensor, v: Tensor) -> Tensor:
    return u * _scales(u, v)


def _balance_v(u: Tensor, v: Tensor) -> Tensor:
    return v / _scales(u, v)


# ----------------------------------------------------------- data-aware helpers
def _dense(a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    return materialize(a, b, plan)


def _adjoint(g: Tensor, other: Tensor, plan: EinsumPlan, core: str) -> Tensor:
    """Adjoint of the map (core -> materialized W) at a fixed other core, applied to g (d_out, d_in)."""
    s = plan.sizes
    g6 = _pad(g, plan).reshape(s.delta, s.epsilon, s.phi, s.alpha, s.beta, s.gamma)
    if core == "A":
        return torch.einsum("defabg,bgefr->agdfr", g6, other)
    return torch.einsum("defabg,agdfr->bgefr", g6, other)


def _cg_core(w: Tensor, factor: Tensor, plan: EinsumPlan, a: Tensor, b: Tensor, core: str) -> Tensor:
    """Solve min over one core of ||(W - W_hat) F||_F (other core fixed) by conjugate gradients.

    F (d_in, k) with F F^T = S. The normal equations are J^T (J(x) S) = J^T (W S).
    """
    other = b if core == "A" else a

    def lin(x: Tensor) -> Tensor:
        return _dense(x, b, plan) if core == "A" else _dense(a, x, plan)

    def op(x: Tensor) -> Tensor:
        return _adjoint((lin(x) @ factor) @ factor.T, other, plan, core)

    x = (a if core == "A" else b).clone()
    rhs = _adjoint((w @ factor) @ factor.T, other, plan, core)
    r = rhs - op(x)
    p = r.clone()
    rr = r.pow(2).sum()
    stop = 1e-28 * rhs.pow(2).sum()
    for _ in range(_CG_ITERS):
        if rr <= stop:
            break
        hp = op(p)
        curv = (p * hp).sum()
        if curv <= 0:
            break
        step = rr / curv
        x = x + step * p
        r = r - step * hp
        rr_new = r.pow(2).sum()
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _output_err(w: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan, factor: Tensor) -> float:
    return float(((w - _dense(a, b, plan)) @ factor).pow(2).sum())


def _psd_root(m: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric square root of a (batch of) PSD matrix and its pseudo-inverse."""
    sym = (m + m.transpose(-1, -2)) / 2
    lam, q = torch.linalg.eigh(sym)
    lam = lam.clamp(min=0)
    tol = lam.amax(dim=-1, keepdim=True) * lam.shape[-1] * torch.finfo(lam.dtype).eps
    root = lam.sqrt()
    inv = torch.where(lam > tol, 1 / root.clamp(min=torch.finfo(lam.dtype).tiny), torch.zeros_like(root))
    return (q * root.unsqueeze(-2)) @ q.transpose(-1, -2), (q * inv.unsqueeze(-2)) @ q.transpose(-1, -2)


def _kronecker_whitening(s_mat: Tensor, plan: EinsumPlan) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Nearest S ~ blockdiag_gamma(S_a^g (x) S_b^g) and its roots; returns the relative residual.

    Returns (La, La^+, Lb, Lb^+, residual) with La (gamma, alpha, alpha), Lb (gamma, beta,
    beta) symmetric square roots, residual = ||S - surrogate||^2 / ||S||^2.
    """
    sz = plan.sizes
    na, nb, ng = sz.alpha, sz.beta, sz.gamma
    s6 = s_mat.reshape(na, nb, ng, na, nb, ng)
    diag = torch.diagonal(s6, dim1=2, dim2=5).permute(4, 0, 1, 2, 3)  # (g, a, b, a', b')
    total = s_mat.pow(2).sum()
    off_mask = ~torch.eye(ng, dtype=torch.bool, device=s_mat.device)
    off = s6.permute(2, 5, 0, 1, 3, 4)[off_mask].pow(2).sum()
    rearranged = diag.permute(0, 1, 3, 2, 4).reshape(ng, na * na, nb * nb)
    u, sv, vh = torch.linalg.svd(rearranged, full_matrices=False)
    s_a = (u[:, :, 0] * sv[:, :1].sqrt()).reshape(ng, na, na)
    s_b = (vh[:, 0, :] * sv[:, :1].sqrt()).reshape(ng, nb, nb)
    sign = torch.where(torch.diagonal(s_a, dim1=1, dim2=2).sum(-1) < 0, -1.0, 1.0).to(s_a.dtype)
    s_a, s_b = s_a * sign[:, None, None], s_b * sign[:, None, None]
    rank1 = (u[:, :, :1] * sv[:, None, :1]) @ vh[:, :1, :]
    residual = off + (rearranged - rank1).pow(2).sum()  # computed directly: no cancellation
    rel = float(residual / total) if total > 0 else 0.0
    la, la_inv = _psd_root(s_a)
    lb, lb_inv = _psd_root(s_b)
    return la, la_inv, lb, lb_inv, max(rel, 0.0)


def _whitened_project(w: Tensor, plan: EinsumPlan, la, la_inv, lb, lb_inv) -> tuple[Tensor, Tensor]:
    """Project W (La (x) Lb) and map the cores back: exact when S is block-Kronecker."""
    s = plan.sizes
    w6 = w.reshape(s.delta, s.epsilon, s.phi, s.alpha, s.beta, s.gamma)
    white = torch.einsum("defabg,gax,gby->defxyg", w6, la, lb).reshape(w.shape)
    a, b = _svd_project(white, plan)
    a = torch.einsum("gax,xgdfr->agdfr", la_inv, a)
    b = torch.einsum("gby,ygefr->bgefr", lb_inv, b)
    return a, b


# ------------------------------------------------------------------ validation
def _check(weight: object, plan: object, calibration: object, als_sweeps: object, als_restarts: object) -> None:
    if not isinstance(plan, EinsumPlan):
        raise TypeError(f"plan must be an EinsumPlan, got {type(plan).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor of shape (d_out, d_in), got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D tensor of shape (d_out, d_in) = ({plan.d_out}, {plan.d_in}), "
                         f"got a {weight.ndim}-D tensor of shape {tuple(weight.shape)}")
    if tuple(weight.shape) != (plan.d_out, plan.d_in):
        raise ValueError(f"weight must have shape (d_out, d_in) = ({plan.d_out}, {plan.d_in}) for this plan, "
                         f"got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"weight must be finite, got {bad} non-finite entries (nan/inf) in a "
                         f"{tuple(weight.shape)} tensor")
    if calibration is not None:
        if not isinstance(calibration, Tensor):
            raise TypeError(f"calibration must be a torch.Tensor of shape (n, d_in), got "
                            f"{type(calibration).__name__}")
        if calibration.ndim != 2 or calibration.shape[1] != plan.d_in or calibration.shape[0] < 1:
            raise ValueError(f"calibration must have shape (n, d_in) = (n >= 1, {plan.d_in}), got "
                             f"{tuple(calibration.shape)}")
        if not calibration.is_floating_point():
            raise ValueError(f"calibration must be a floating-point tensor, got dtype {calibration.dtype}")
        if not bool(torch.isfinite(calibration).all()):
            raise ValueError("calibration must be finite, got non-finite entries (nan/inf)")
    if isinstance(als_sweeps, bool) or not isinstance(als_sweeps, int) or als_sweeps < 0:
        raise ValueError(f"als_sweeps must be a non-negative integer, got {als_sweeps!r}")
    if isinstance(als_restarts, bool) or not isinstance(als_restarts, int) or als_restarts < 0:
        raise ValueError(f"als_restarts must be a non-negative integer, got {als_restarts!r}")


# ------------------------------------------------------------------ public API
@torch.no_grad()
def project_cores(weight: Tensor, plan: EinsumPlan, *, calibration: Tensor | None = None,
                  als_sweeps: int = 100, als_restarts: int = 8) -> ProjectionResult:
    """Cores (A, B) of ``plan`` whose materialized matrix is nearest to ``weight``.

    Args:
        weight: (d_out, d_in) dense matrix, as ``nn.Linear.weight``; finite, floating point.
        plan: the structure and sizes (``make_plan(theta, d_in, d_out)``).
        calibration: optional (n, d_in) inputs of the layer. Given, the objective is the output
            error ||(W - W_hat) X^T||_F; ``relative_error`` is then relative to ||W X^T||_F.
        als_sweeps: alternating sweeps for padded plans and for the non-exact data-aware case.
        als_restarts: seeded random restarts of the padded ALS (each block keeps its best run).
    Returns:
        A ``ProjectionResult`` with cores in the plan's shapes, in ``weight``'s dtype and
        device (computed in float32 for half precisions; ALS normal equations in float64).

    Exactness (``result.exact``):
      * no calibration, plan not padded: the truncated SVD per (gamma, phi) block; globally
        optimal in Frobenius norm (ties in singular values aside).
      * no calibration, padded plan: SVD of the zero-padded weight, then exact ALS sweeps on
        the unpadded entries, plus ``als_restarts`` seeded random starts, each (gamma, phi)
        block keeping its best run: never worse than the SVD start, not certified optimal
        (masked low-rank approximation is non-convex; restarts make a poor basin unlikely).
      * calibration, plan not padded, S = X^T X / n block-diagonal across gamma with each
        gamma block a Kronecker product S_alpha (x) S_beta (always true when n_gamma = 1 and
        n_alpha = 1 or n_beta = 1: low rank, dense; true for inputs independent across the
        axes): whiten, project, un-whiten with pseudo-inverse roots; globally optimal.
      * otherwise: the best of the plain projection and the projection whitened by the
        nearest block-Kronecker surrogate of S, then ALS sweeps on the weighted objective
        (each core by conjugate gradients): monotone, not certified.

    Cores are raw. A single-entry core is the constant 1 in ``EinsumLinear`` (a buffer), so
    its scale is folded into the other core and it is returned as ones. A layer built with
    ``einsum_norm=True`` uses ``core * gain * clamp(rms^2 / init_std^2, min=1)^-1/2``; to make
    the effective core equal the projection, set ``gain = max(1, rms(core) / init_std)``.
    """
    _check(weight, plan, calibration, als_sweeps, als_restarts)
    t0 = time.perf_counter()
    out_dtype = weight.dtype
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    w = weight.detach().to(dtype)
    scale = float(w.pow(2).sum())

    a, b = _svd_project(_pad(w, plan), plan)
    method, exact = "svd", not plan.is_padded
    if plan.is_padded and scale > 0:
        # ALS in float64: normal equations square the condition number
        a64, b64 = _als_padded(w.double(), plan, a.double(), b.double(), als_sweeps, als_restarts)
        a, b, method = a64.to(dtype), b64.to(dtype), "svd+als"

    if calibration is None:
        a, b = _fold_trivial(a, b, plan)
        err = math.sqrt(float((w - _dense(a, b, plan)).pow(2).sum()) / scale) if scale > 0 else 0.0
    else:
        a, b, err, exact = _data_aware(w, plan, a, b, calibration.detach().to(dtype), als_sweeps)
        method = "data-aware"
    seconds = time.perf_counter() - t0
    log.info("projected a %dx%d weight onto %s (%s): relative error %.4g in %.3f s",
             plan.d_out, plan.d_in, plan.theta, method, err, seconds)
    return ProjectionResult(a.to(out_dtype), b.to(out_dtype), err, method, exact, seconds)


def _data_aware(w: Tensor, plan: EinsumPlan, a: Tensor, b: Tensor, x: Tensor,
                sweeps: int) -> tuple[Tensor, Tensor, float, bool]:
    n = x.shape[0]
    s_mat = x.T @ x / n
    # F with F F^T = S: the inputs themselves when cheaper than the d_in x d_in root
    factor = x.T / math.sqrt(n) if n <= plan.d_in else _psd_root(s_mat)[0]
    denom = float((w @ factor).pow(2).sum())
    candidates = [_fold_trivial(a, b, plan)]
    exact = False
    if not plan.is_padded:
        la, la_inv, lb, lb_inv, resid = _kronecker_whitening(s_mat, plan)
        candidates.append(_fold_trivial(*_whitened_project(w, plan, la, la_inv, lb, lb_inv), plan))
        exact = resid <= (100 * torch.finfo(w.dtype).eps) ** 2
    errs = [_output_err(w, ca, cb, plan, factor) for ca, cb in candidates]
    best = min(range(len(candidates)), key=errs.__getitem__)
    (a, b), err = candidates[best], errs[best]
    if exact:  # the whitened projection is optimal, so is any candidate as good as it
        return a, b, math.sqrt(err / denom) if denom > 0 else 0.0, True
    for _ in range(sweeps if denom > 0 else 0):
        prev = err
        if not plan.trivial_a:
            a_new = _cg_core(w, factor, plan, a, b, "A")
            e = _output_err(w, a_new, b, plan, factor)
            if e < err:
                a, err = a_new, e
        if not plan.trivial_b:
            b_new = _cg_core(w, factor, plan, a, b, "B")
            e = _output_err(w, a, b_new, plan, factor)
            if e < err:
                b, err = b_new, e
        if prev - err <= 1e-7 * prev:
            break
    if not (plan.trivial_a or plan.trivial_b):
        u, v = _factors_from_cores(a, b, plan)
        a, b = _cores_from_factors(_balance(u, v), _balance_v(u, v), plan)
    return a, b, (math.sqrt(err / denom) if denom > 0 else 0.0), exact
