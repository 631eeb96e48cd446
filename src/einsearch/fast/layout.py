"""The layout-search candidate: batched GEMMs over memory layouts chosen by a search.

One of the candidate programs the planner (``fast/planner.py``) times; see docs/design.md
section 8. ``run(x, a, b, plan)`` equals ``functional.einsum_linear_reference`` (values and
gradients w.r.t. x, a, b) for every plan. Every plan gets a *program*, found once per plan by a
small search over memory layouts (``program(plan)``):

* Each of the six GEMMs (two forward; per step one activation gradient and one core gradient)
  is ``out[B, M, N] = L[B, M, K] @ R[B, K, N]`` over named axes, where B is the step's shared
  block axis (gamma in step 1, phi in step 2). When a step has no block axis, the token axis n
  may serve as B (a batch of small per-token GEMMs with the core broadcast), which reads x in
  place where a single GEMM would first need a permuted copy (Kronecker, tensor-train).
* An activation stored in a given axis order can be handed to BLAS without a copy iff each of
  B, M, K is a consecutive run of axes and B is not innermost. GEMM *outputs* are contiguous as
  ``[B, M, N]`` or ``[B, N, M]``, written with ``out=`` into buffers from the pool
  (``fast/buffers.py``).
* The forward and the backward chains choose their layouts independently; the search minimizes
  an *estimated* cost in activation elements moved (permute prices and GEMM-layout penalties,
  below). Those prices are an estimate-mode heuristic only: they were measured once on another
  CPU (AVX-512) and rank layouts without timing anything. In ``measure`` mode the planner times
  the program they pick against the other candidates on the machine at hand and keeps whichever
  is fastest, so no constant here decides anything unmeasured.
* A custom ``autograd.Function`` saves x' and z2 (nothing is recomputed) and runs the four
  backward GEMMs over the same strided views.
* Special cases fall out of the search: a trivial (single-entry) core is one ``mm``; low rank is
  two plain GEMMs; Kronecker and tensor-train read and write every activation in place.

Double backward (``create_graph=True``) recomputes the first-order gradient through the
reference path.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional import crop_output, einsum_linear_reference, pad_input
from ..plan import EQ_A, EQ_B, EinsumPlan
from .buffers import POOL

__all__ = ["run", "program", "describe", "Program", "GemmSpec"]

TOKEN = "n"
_X_AXES = "nabg"
_Y_AXES = "ndef"

# --------------------------------------------------------------------------- estimate heuristic
# ESTIMATE-MODE HEURISTIC (not a measurement of this machine): prices in units of "one element
# copied" (read + write), measured once on another CPU (2 cores, AVX-512) with 2048 tokens:
# contiguous copy 1.0; a permute keeping the innermost axis ~1.1; a per-token
# transpose ~2.3; a large 2-D transpose ~6 (torch's blocked kernel is single-threaded); any
# other strided permute 10-25.
_PRICE_BLOCK = 1.1
_PRICE_BLOCK_SMALL_CHUNK = 3.0
_PRICE_PER_TOKEN = 2.3
_PRICE_2D = 6.0
_PRICE_STRIDED = 15.0
# (Estimate heuristic, as above.) Extra time of a batched GEMM over its best operand layouts, in copies of its operands
# (average of input and output sizes), by the memory order of the runs of the batch axes B,
# rows M and the contracted (K) or produced (N) axes of each activation operand. Measured
# with 32 blocks of 32 x 32 and 2048 tokens. "MBK" (the batch in the middle: short rows far
# apart, e.g. x permuted per token) is slow to read; writing a GEMM output transposed ("BNM")
# costs extra unless the input is read transposed too.
_PEN_GEMM = {  # out[B,M,N] = L[B,M,K] @ core: "L class/out class"
    "BMK/BMN": 0.06, "BMK/BNM": 0.45, "BKM/BMN": 0.01, "BKM/BNM": 0.0,
    "MBK/BMN": 0.5, "MBK/BNM": 1.15, "KBM/BMN": 0.2, "KBM/BNM": 0.04,
}
_PEN_CORE_GRAD = {  # dcore[B,K,N] = L[B,M,K]^T @ dout[B,M,N]: "L class/dout class"
    "BMK/BMN": 0.2, "BMK/BNM": 0.83, "BMK/MBN": 0.72, "BMK/NBM": 1.15,
    "BKM/BMN": 0.02, "BKM/BNM": 0.63, "BKM/MBN": 0.61, "BKM/NBM": 0.92,
    "MBK/BMN": 0.73, "MBK/BNM": 1.67, "MBK/MBN": 0.97, "MBK/NBM": 1.98,
    "KBM/BMN": 0.0, "KBM/BNM": 0.86, "KBM/MBN": 0.61, "KBM/NBM": 1.05,
}
_PENALTY_UNKNOWN = 0.5
_PENALTY_REDUCE_TEMP = 1.0    # per-token core gradient: per temp element written and read
_REDUCE_CHUNK_ELEMS = 1 << 20  # temp elements per chunk of the per-token core gradient

# ============================================================================ layouts
def _prod(xs) -> int:
    return math.prod(xs)


def _groups_of(src: str, dst: str) -> tuple[list[str], list[str]]:
    """Merge axes that are adjacent, in the same order, in both layouts ("super-axes")."""
    pos = {ax: i for i, ax in enumerate(dst)}
    groups: list[str] = []
    for ax in src:
        if groups and pos[ax] == pos[groups[-1][-1]] + 1:
            groups[-1] += ax
        else:
            groups.append(ax)
    dst_groups = sorted(groups, key=lambda g: pos[g[0]])
    return groups, dst_groups


def _direct_price(src_g: list[str], dst_g: list[str], gsize: dict[str, int]) -> float:
    """Price per element of one permute-copy between super-axis orders.

    torch's copy kernel walks the output in order with scalar loads. It runs near memcpy speed
    when the innermost axis stays innermost (contiguous chunks), and at about a per-token
    transpose's speed when each source cache line is reused soon (few output elements lie
    between two uses of a line: the output axes inside the source's innermost axis) and the
    innermost output loop touches few pages; otherwise every access misses (10-25x memcpy).
    """
    if src_g == dst_g:
        return 0.0
    if src_g[-1] == dst_g[-1]:
        return _PRICE_BLOCK if gsize[src_g[-1]] >= 16 else _PRICE_BLOCK_SMALL_CHUNK
    # Output elements written between two uses of a source line: the output axes inside
    # the source's innermost axis u. Count the cache lines and pages they touch.
    window = dst_g[dst_g.index(src_g[-1]) + 1:]
    lines, pages = 1, 1.0
    for g in window:
        stride_bytes = 4 * _prod(gsize[h] for h in src_g[src_g.index(g) + 1:])
        lines *= gsize[g]
        pages *= gsize[g] if stride_bytes >= 4096 else max(1.0, gsize[g] * stride_bytes / 4096)
    if lines <= 16384 and pages <= 64:
        return _PRICE_PER_TOKEN
    # a 2-D transpose can use torch's blocked (single-threaded) transpose kernel instead
    return _PRICE_2D if len(src_g) == 2 else _PRICE_STRIDED


@functools.lru_cache(maxsize=65536)
def _price(src: str, dst: str, sizes: tuple[tuple[str, int], ...]) -> float:
    """Price per element of one permute-copy step from ``src`` to ``dst`` order (torch's kernel).

    A permute could also run as a batched GEMM with an identity matrix (MKL transposes small
    blocks fast that way), but those would be counted as FLOPs by ``torch.utils.flop_counter``
    (the training ledger must count the layer's real FLOPs) and turn an inf into NaNs along a
    whole row (inf * 0), so einsearch does not.
    """
    sg, dg = _groups_of(src, dst)
    size = dict(sizes)
    gsize = {g: _prod(size.get(ax, 1) for ax in g) for g in sg}
    return _direct_price(sg, dg, gsize)


@functools.lru_cache(maxsize=65536)
def _relayout_path(src: str, dst: str, sizes: tuple[tuple[str, int], ...]) -> tuple[float, tuple[str, ...]]:
    """Cheapest way to permute ``src`` into ``dst``: (price per element, layouts visited)."""
    if src == dst:
        return 0.0, (src,)

    def price(s: str, d: str) -> float:
        return _price(s, d, sizes)

    best: tuple[float, tuple[str, ...]] = (price(src, dst), (src, dst))
    if best[0] <= _PRICE_PER_TOKEN:
        return best
    # Two cheap steps: a per-token transpose (token axis outermost) and a permute that keeps
    # the innermost axis, in either order.
    mids = {src.replace(dst[-1], "") + dst[-1], dst.replace(src[-1], "") + src[-1],
            TOKEN + src.replace(TOKEN, ""), TOKEN + dst.replace(TOKEN, "")}
    for mid in sorted(mids):
        if mid in (src, dst):
            continue
        c = price(src, mid) + price(mid, dst)
        if c < best[0]:
            best = (c, (src, mid, dst))
    return best


def _run_orders(layout: str, groups: dict[str, str | frozenset]) -> dict[str, str] | None:
    """Axis order of each group when ``layout`` is a concatenation of one run per group.

    None when a (non-empty) group is not a consecutive run, or when the batch group ``"B"``
    is innermost while both matrix groups are non-empty (a BLAS matrix needs a unit-stride
    dimension; an empty group, of size 1, can take stride 1).
    """
    owner = {}
    for name, axes in groups.items():
        for ax in axes:
            owner[ax] = name
    if set(owner) != set(layout) or len(owner) != len(layout):
        return None
    seq = [owner[ax] for ax in layout]
    runs = [k for k, _ in itertools.groupby(seq)]
    if len(runs) != len(set(runs)):
        return None
    if runs and runs[-1] == "B" and all(axes for name, axes in groups.items() if name != "B"):
        return None
    orders = {name: "" for name in groups}
    for ax in layout:
        orders[owner[ax]] += ax
    return orders


@dataclass(frozen=True)
class GemmSpec:
    """``out[B, M, N] = L[B, M, K] @ R[B, K, N]`` (orders of the named axes of each group).

    ``batch``: the block axis, the token axis ``"n"`` (core broadcast) or ``""``.
    ``l_layout`` / ``o_layout``: memory orders of the activation input and of the output.
    """

    batch: str
    m: str
    k: str
    n_: str
    l_layout: str
    o_layout: str


@dataclass(frozen=True)
class Program:
    """How ``fast.einsum_linear`` runs one plan (see the module docstring)."""

    kind: str                     # "identity" | "mm" | "two_step" | "reference"
    sizes: tuple[tuple[str, int], ...]
    core1: str = ""               # "a" / "b": the core contracted with x first
    x_axes: str = ""              # natural (unpermuted) orders of x, z, y
    z_axes: str = ""
    y_axes: str = ""
    f1: GemmSpec | None = None    # z = x' C1
    f2: GemmSpec | None = None    # y' = z2 C2
    b2: GemmSpec | None = None    # dz2 = dy' C2^T   (batch, M2, N2 -> K2)
    b1: GemmSpec | None = None    # dx' = dz1 C1^T
    z2_layout: str = ""           # z as step 2 reads it
    dz1_layout: str = ""          # dz as step 1's backward reads it
    cost_forward: float = 0.0     # elements moved per token (price-weighted)
    cost_backward: float = 0.0

    def specs(self) -> tuple[GemmSpec, GemmSpec, GemmSpec, GemmSpec]:
        """(f1, f2, b1, b2) of a two-step program."""
        if self.f1 is None or self.f2 is None or self.b1 is None or self.b2 is None:
            raise ValueError(f"a {self.kind!r} program has no GEMM specs")
        return self.f1, self.f2, self.b1, self.b2

    @property
    def cost(self) -> float:
        return self.cost_forward + self.cost_backward

    @property
    def is_chain(self) -> bool:
        """Both steps are plain row-major 2-D GEMMs on x, z and y as they are (low rank)."""
        if self.kind != "two_step":
            return False
        f1, f2, _, _ = self.specs()
        return (f1.batch == f2.batch == "" and f1.l_layout == self.x_axes == f1.m + f1.k
                and f1.o_layout == self.z2_layout == f1.m + f1.n_ == f2.m + f2.k
                and f2.o_layout == self.y_axes == f2.m + f2.n_)


def _nontrivial(axes: str, sizes: dict[str, int]) -> str:
    return "".join(ax for ax in axes if ax == TOKEN or sizes[ax] > 1)


def _step_options(l_axes: str, r_axes: str, o_axes: str) -> list[tuple[str, frozenset, frozenset, frozenset]]:
    """Ways to run one contraction as a batched GEMM: (batch, M, K, N) axis sets."""
    L, R, O = set(l_axes), set(r_axes), set(o_axes)
    shared = L & R & O
    k = frozenset((L & R) - O)
    m = frozenset((L & O) - R)
    n_ = frozenset((R & O) - L)
    assert len(shared) <= 1, shared
    if shared:
        return [("".join(shared), m, k, n_)]
    opts = [("", m, k, n_)]
    if TOKEN in m and len(m) > 1:
        opts.append((TOKEN, m - {TOKEN}, k, n_))
    return opts


def _perms(axes) -> list[str]:
    return ["".join(p) for p in itertools.permutations(sorted(axes))]


def _outputs(batch: str, m_order: str, other: frozenset) -> list[tuple[str, str]]:
    """Contiguous output layouts ``B + M + O`` / ``B + O + M``: (layout, order of O)."""
    out = []
    for o in _perms(other):
        for lay in (batch + m_order + o, batch + o + m_order):
            out.append((lay, o))
    seen, uniq = set(), []
    for lay, o in out:
        if lay not in seen:
            seen.add(lay)
            uniq.append((lay, o))
    return uniq


@functools.lru_cache(maxsize=4096)
def _program(plan: EinsumPlan) -> Program:
    s = plan.sizes.as_dict()
    sizes = {"a": s["alpha"], "b": s["beta"], "g": s["gamma"], "d": s["delta"],
             "e": s["epsilon"], "f": s["phi"], "r": s["rho"]}
    sz = tuple(sorted(sizes.items()))
    if plan.trivial_a and plan.trivial_b:
        return Program(kind="identity", sizes=sz)
    if plan.trivial_a or plan.trivial_b:
        return Program(kind="mm", sizes=sz, core1="b" if plan.trivial_a else "a")

    core1 = "a" if plan.first == "A" else "b"
    c1_axes = _nontrivial(EQ_A if core1 == "a" else EQ_B, sizes)
    c2_axes = _nontrivial(EQ_B if core1 == "a" else EQ_A, sizes)
    x_axes = _nontrivial(_X_AXES, sizes)
    z_axes = _nontrivial(plan.eq_first.split("->")[1], sizes)
    y_axes = _nontrivial(_Y_AXES, sizes)
    numel = {ax: sizes[ax] for ax in sizes}
    per_tok = lambda axes: _prod(numel[ax] for ax in axes if ax != TOKEN)  # noqa: E731
    x_el, z_el, y_el = per_tok(x_axes), per_tok(z_axes), per_tok(y_axes)
    size_key = tuple(sorted({**numel, TOKEN: 2048}.items()))

    def relayout(src: str, dst: str, direct: bool = False) -> float:
        if direct:
            return 0.0 if src == dst else _price(src, dst, size_key)
        return _relayout_path(src, dst, size_key)[0]

    best: tuple | None = None
    for bt1, M1, K1, N1 in _step_options(x_axes, c1_axes, z_axes):
        for bt2, M2, K2, N2 in _step_options(z_axes, c2_axes, y_axes):
            reduce_cost = 0.0
            if bt1 == TOKEN:
                reduce_cost += _PENALTY_REDUCE_TEMP * per_tok(K1) * per_tok(N1)
            if bt2 == TOKEN:
                reduce_cost += _PENALTY_REDUCE_TEMP * per_tok(K2) * per_tok(N2)
            for m1 in _perms(M1):
                for m2 in _perms(M2):
                    cand = _search(bt1, M1, K1, N1, bt2, M2, K2, N2, m1, m2, x_axes, z_axes, y_axes,
                                   x_el, z_el, y_el, relayout)
                    if cand is None:
                        continue
                    cf, cb, specs = cand
                    total = cf + cb + reduce_cost
                    if best is None or total < best[0] - 1e-9:
                        best = (total, cf, cb + reduce_cost, specs)
    if best is None:  # pragma: no cover - the search always finds layouts; stay safe anyway
        return Program(kind="reference", sizes=sz)
    _, cf, cb, (f1, f2, b2, b1, z2_layout, dz1_layout) = best
    return Program(kind="two_step", sizes=sz, core1=core1, x_axes=x_axes, z_axes=z_axes, y_axes=y_axes,
                   f1=f1, f2=f2, b2=b2, b1=b1, z2_layout=z2_layout, dz1_layout=dz1_layout,
                   cost_forward=cf, cost_backward=cb)


def _run_class(layout: str, groups: dict[str, str | frozenset]) -> str:
    """Order of the (non-empty) runs of ``layout``, e.g. "BMK" (valid layouts only)."""
    owner = {ax: name for name, axes in groups.items() for ax in axes}
    return "".join(k for k, _ in itertools.groupby(owner[ax] for ax in layout))


def _gemm_penalty(table: dict[str, float], l_class: str, o_class: str) -> float:
    """Extra time of one batched GEMM over its best operand layouts, in copies of its operands."""
    if "B" not in l_class or "B" not in o_class:
        return 0.0  # plain GEMM: BLAS reads transposed operands at full speed
    return table.get(f"{l_class}/{o_class}", _PENALTY_UNKNOWN)


def _search(bt1, M1, K1, N1, bt2, M2, K2, N2, m1, m2, x_axes, z_axes, y_axes, x_el, z_el, y_el, relayout):
    """Best layouts for fixed batch choices and M orders; None if infeasible.

    Cost = permutes (price x elements) + for each of the six GEMMs the measured extra time of
    its operand layouts (``_PEN_GEMM`` / ``_PEN_CORE_GRAD``, in copies of the operands).
    Forward and backward layouts meet in the two core gradients (x' with dz1, z2 with dy'), so
    x' and dy' are enumerated jointly and the rest is chosen per pair.
    """
    g1_in = {"B": bt1, "M": M1, "K": K1}
    g1_out = {"B": bt1, "M": M1, "N": N1}
    g2_in = {"B": bt2, "M": M2, "K": K2}
    g2_out = {"B": bt2, "M": M2, "N": N2}
    fwd, cg = _PEN_GEMM, _PEN_CORE_GRAD

    def readable(axes, groups, m_order, key):
        out = []
        for lay in _perms(axes):
            o = _run_orders(lay, groups)
            if o is not None and o["M"] == m_order:
                out.append((lay, o[key], _run_class(lay, groups)))
        return out

    xs = readable(x_axes, g1_in, m1, "K")            # x' as step 1 reads it
    dys = readable(y_axes, g2_out, m2, "N")          # dy' as step 2's backward reads it
    z2s = readable(z_axes, g2_in, m2, "K")           # z as step 2 reads it
    dz1s = readable(z_axes, g1_out, m1, "N")         # dz as step 1's backward reads it
    if not (xs and dys and z2s and dz1s):
        return None

    def outs(batch, m_order, other, groups):
        return [(lay, o, _run_class(lay, groups)) for lay, o in _outputs(batch, m_order, other)]

    z_outs = outs(bt1, m1, N1, g1_out)
    y_outs = outs(bt2, m2, N2, g2_out)
    dz_outs = outs(bt2, m2, K2, g2_in)
    dx_outs = outs(bt1, m1, K1, g1_in)

    def links(srcs, dsts, numel):
        """(src, dst, permute cost): read in place where possible, else the cheapest permutes."""
        by = {d[0]: d for d in dsts}
        pairs = [(sv, by[sv[0]], 0.0) for sv in srcs if sv[0] in by]
        if pairs:
            return pairs
        for sv in srcs:
            near = sorted(dsts, key=lambda d: (relayout(sv[0], d[0], direct=True), d[0]))[:4]
            pairs += [(sv, d, relayout(sv[0], d[0]) * numel) for d in near]
        return pairs

    z_links = links(z_outs, z2s, z_el)
    dz_links = links(dz_outs, dz1s, z_el)
    # best y' for each z2 (step 2 forward + permute to y); best dx' for each dz1
    y_best = {}
    for lz2, _, cz2 in z2s:
        y_best[lz2] = min((_gemm_penalty(fwd, cz2, cy) * (z_el + y_el) / 2 + relayout(ly, y_axes) * y_el, ly, n2)
                          for ly, n2, cy in y_outs)
    dx_best = {}
    for ldz1, _, cdz1 in dz1s:
        dx_best[ldz1] = min((_gemm_penalty(fwd, cdz1, cx) * (z_el + x_el) / 2 + relayout(ldx, x_axes) * x_el,
                             ldx, k1b) for ldx, k1b, cx in dx_outs)

    best = None
    for lx, k1, cx in xs:
        c_x = relayout(x_axes, lx) * x_el
        for ldy, n2b, cdy in dys:
            c_dy = relayout(y_axes, ldy) * y_el
            zb = min((_gemm_penalty(fwd, cx, z[2]) * (x_el + z_el) / 2 + perm + y_best[z2[0]][0]
                      + _gemm_penalty(cg, z2[2], cdy) * (z_el + y_el) / 2, z, z2) for z, z2, perm in z_links)
            db = min((_gemm_penalty(fwd, cdy, dz[2]) * (y_el + z_el) / 2 + perm + dx_best[dz1[0]][0]
                      + _gemm_penalty(cg, cx, dz1[2]) * (x_el + z_el) / 2, dz, dz1) for dz, dz1, perm in dz_links)
            total = c_x + zb[0] + c_dy + db[0]
            if best is None or total < best[0] - 1e-9:
                best = (total, (lx, k1), (ldy, n2b), zb, db, c_x + zb[0], c_dy + db[0])
    if best is None:  # no readable layouts (checked above); keeps the type checker honest
        return None
    _, (lx, k1), (ldy, n2b), (_, z, z2), (_, dz, dz1), cost_f, cost_b = best
    lz, n1, lz2, k2 = z[0], z[1], z2[0], z2[1]
    ldz, k2b, ldz1, n1b = dz[0], dz[1], dz1[0], dz1[1]
    _, ly, n2 = y_best[lz2]
    _, ldx, k1b = dx_best[ldz1]
    f1 = GemmSpec(bt1, m1, k1, n1, lx, lz)
    f2 = GemmSpec(bt2, m2, k2, n2, lz2, ly)
    b2 = GemmSpec(bt2, m2, n2b, k2b, ldy, ldz)      # dz = dy' @ C2^T: contraction over N2
    b1 = GemmSpec(bt1, m1, n1b, k1b, ldz1, ldx)     # dx' = dz1 @ C1^T: contraction over N1
    return cost_f, cost_b, (f1, f2, b2, b1, lz2, ldz1)


def program(plan: EinsumPlan) -> Program:
    """The (cached) program that runs ``plan``: layouts, GEMM shapes, expected copy cost."""
    return _program(plan)


def describe(plan: EinsumPlan) -> str:
    """One line: how the fast path runs ``plan`` (for logs and benchmarks)."""
    p = program(plan)
    if p.kind != "two_step":
        return p.kind

    def step(spec: GemmSpec) -> str:
        b = f"{spec.batch}:" if spec.batch else ""
        return f"[{b}{spec.m or '1'}x{spec.k or '1'}x{spec.n_ or '1'}]"

    f1, f2, b1, b2 = p.specs()
    z = f1.o_layout if f1.o_layout == p.z2_layout else f"{f1.o_layout}->{p.z2_layout}"
    dz = b2.o_layout if b2.o_layout == p.dz1_layout else f"{b2.o_layout}->{p.dz1_layout}"
    return (f"fwd x'={f1.l_layout} {step(f1)} z={z} {step(f2)} y'={f2.o_layout}; "
            f"bwd dy'={b2.l_layout} dz={dz} dx'={b1.o_layout}; "
            f"moved/token={p.cost_forward:.0f}+{p.cost_backward:.0f}")


# ============================================================================ relayouts
def _relayout(t: Tensor, src: str, dst: str, shape: dict[str, int], out: Tensor | None = None) -> Tensor:
    """Copy ``t`` (contiguous in ``src`` order) into a contiguous tensor in ``dst`` order.

    The result is a pool buffer shaped by the axes of ``dst`` (or ``out``, any contiguous
    tensor of the same size, when given); with ``src == dst`` and no ``out``, a view of ``t``.
    """
    if src == dst:
        v = t.view([shape[ax] for ax in dst])
        if out is None:
            return v
        out.view(v.shape).copy_(v)
        return out
    key = tuple(sorted((ax, 2048 if ax == TOKEN else v) for ax, v in shape.items()))
    _, path = _relayout_path(src, dst, key)
    steps = list(zip(path[:-1], path[1:]))
    for i, (s, d) in enumerate(steps):
        sg, dg = _groups_of(s, d)
        v = t.view([_prod(shape[ax] for ax in g) for g in sg])
        perm = [sg.index(g) for g in dg]
        if i == len(steps) - 1:
            dst_t = out if out is not None else POOL.empty([shape[ax] for ax in dst], t.dtype, t.device)
        else:
            dst_t = POOL.empty([shape[ax] for ax in d], t.dtype, t.device)
        dv = dst_t.view([_prod(shape[ax] for ax in g) for g in dg])
        if len(sg) == 2 and _price(s, d, key) < _PRICE_2D:
            # keep torch off its single-threaded 2-D transpose kernel (copy_ takes that path
            # only for 2-D views); its generic kernel is faster for this access pattern
            dv.unsqueeze(0).copy_(v.unsqueeze(0).permute([0, 2, 1]))
        else:
            dv.copy_(v.permute(perm))
        t = dst_t
    return t


# ============================================================================ GEMMs
def _strides(layout: str, shape: dict[str, int]) -> dict[str, int]:
    out, acc = {}, 1
    for ax in reversed(layout):
        out[ax] = acc
        acc *= shape[ax]
    return out


def _view3(t: Tensor, layout: str, shape: dict[str, int], b: str, m: str, k: str) -> Tensor:
    """``t`` (contiguous in ``layout``) as a strided [B, M, K] view (each group a run)."""
    st = _strides(layout, shape)
    size = [_prod(shape[ax] for ax in g) for g in (b, m, k)]
    stride = [st[g[-1]] if g else 0 for g in (b, m, k)]
    if not m:
        stride[1] = 1 if stride[2] != 1 else max(1, size[2])
    if not k:
        stride[2] = 1 if stride[1] != 1 else max(1, size[1])
    if not b:
        stride[0] = max(1, size[1] * size[2])
    return t.as_strided(size, stride, t.storage_offset())


def _core_axes(core: str, shape: dict[str, int]) -> str:
    return "".join(ax for ax in (EQ_A if core == "a" else EQ_B) if shape[ax] > 1)


def _core3(core: Tensor, which: str, batch: str, k: str, n_: str, shape: dict[str, int]) -> Tensor:
    """Core as a contiguous [B or 1, K, N] (the token axis is never in a core)."""
    kept = _core_axes(which, shape)
    bt = batch if batch != TOKEN else ""
    target = bt + k + n_
    t = core.reshape([shape[ax] for ax in kept]).permute([kept.index(ax) for ax in target]).contiguous()
    return t.view(shape[bt] if bt else 1, _prod(shape[ax] for ax in k), _prod(shape[ax] for ax in n_))


def _core_grad(g3: Tensor, which: str, batch: str, k: str, n_: str, shape: dict[str, int], core_shape) -> Tensor:
    """Inverse of ``_core3``: a [B or 1, K, N] gradient in the core's own shape."""
    kept = _core_axes(which, shape)
    bt = batch if batch != TOKEN else ""
    target = bt + k + n_
    t = g3.reshape([shape[ax] for ax in target])
    return t.permute([target.index(ax) for ax in kept]).reshape(core_shape)


def _bmm(left: Tensor, right: Tensor, out: Tensor) -> None:
    """out[i] = left[i] @ right[i]; ``out`` is contiguous as [B, M, N] or as [B, N, M]."""
    if out.stride(2) != 1 and out.size(2) != 1:
        left, right, out = right.mT, left.mT, out.mT
    if out.size(0) == 1:
        torch.mm(left[0], right[0], out=out[0])
    else:
        torch.bmm(left, right, out=out)


def _gemm(act: Tensor, core3: Tensor, spec: GemmSpec, shape: dict[str, int], out: Tensor | None = None) -> Tensor:
    """out = act @ core over ``spec``; ``out`` (a pool buffer unless given) is contiguous in ``spec.o_layout``."""
    if out is None:
        out = POOL.empty([shape[ax] for ax in spec.o_layout], act.dtype, act.device)
    lv = _view3(act, spec.l_layout, shape, spec.batch, spec.m, spec.k)
    ov = _view3(out, spec.o_layout, shape, spec.batch, spec.m, spec.n_)
    r = core3.expand(lv.size(0), -1, -1) if spec.batch == TOKEN else core3
    _bmm(lv, r, ov)
    return out


def _core_gemm(act: Tensor, a_spec: tuple, dout: Tensor, d_spec: tuple, batch: str, shape: dict[str, int]) -> Tensor:
    """sum over M (and over tokens for a per-token batch) of act^T @ dout: [B or 1, K, N].

    ``a_spec`` = (layout, m, k) of ``act``; ``d_spec`` = (layout, m, n) of ``dout``.
    """
    lv = _view3(act, a_spec[0], shape, batch, a_spec[1], a_spec[2])
    ov = _view3(dout, d_spec[0], shape, batch, d_spec[1], d_spec[2])
    if batch != TOKEN:
        return torch.bmm(lv.mT, ov)
    n, kk, nn = lv.size(0), lv.size(2), ov.size(2)
    chunk = max(1, _REDUCE_CHUNK_ELEMS // max(1, kk * nn))
    acc = lv.new_zeros(1, kk, nn)
    for s in range(0, n, chunk):
        acc += torch.bmm(lv[s:s + chunk].mT, ov[s:s + chunk]).sum(0, keepdim=True)
    return acc


# ============================================================================ autograd
class _Relayout(torch.autograd.Function):
    """Differentiable permute-copy between axis orders, through the planned cheap path.

    Input: a tensor whose dims are the axes ``src`` (any dense strides; its memory order is
    read off the strides). Output: contiguous, dims in ``dst`` order. The backward is the same
    op the other way round, so it accepts the gradient in whatever memory order it arrives.
    """

    @staticmethod
    def forward(ctx, t: Tensor, src: str, dst: str, shape: dict[str, int]):
        ctx.src, ctx.dst, ctx.shape = src, dst, shape
        mem = _memory_order(t, src)
        if mem is None:
            t, mem = t.contiguous(), src
        else:
            t = t.permute([src.index(ax) for ax in mem])
        out = _relayout(t, mem, dst, shape)
        return out.clone() if mem == dst else out  # never hand back (a view of) the input

    @staticmethod
    def backward(ctx, g: Tensor):
        return _Relayout.apply(g, ctx.dst, ctx.src, ctx.shape), None, None, None


def _memory_order(t: Tensor, axes: str) -> str | None:
    """The axis order in which ``t`` (dims named ``axes``) is contiguous in memory, if any."""
    if t.is_contiguous():
        return axes
    order = sorted(range(t.dim()), key=lambda i: (t.shape[i] > 1, t.stride(i)), reverse=True)
    if t.permute(order).is_contiguous():
        return "".join(axes[i] for i in order)
    return None


class _TwoStep(torch.autograd.Function):
    """x' (dims in ``prog.f1.l_layout`` order, contiguous) -> y (n, d_out_padded).

    Saves only its input x' and the intermediate z (both read again by the core gradients);
    returns the gradient of x' as a permuted view of a buffer in the backward's own layout,
    which ``_Relayout``'s backward turns into dx in one permute.
    """

    @staticmethod
    def forward(ctx, xp: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan, prog: Program, shape: dict[str, int]):
        f1, f2, _, _ = prog.specs()
        which1 = prog.core1
        which2 = "b" if which1 == "a" else "a"
        c1, c2 = (a, b) if which1 == "a" else (b, a)
        z = _gemm(xp, _core3(c1, which1, f1.batch, f1.k, f1.n_, shape), f1, shape)
        z2 = _relayout(z, f1.o_layout, prog.z2_layout, shape)
        # the output is a pool buffer of its final shape, not a view (a caller may modify it in place)
        y = POOL.empty((shape[TOKEN], plan.d_out_padded), xp.dtype, xp.device)
        c2_3 = _core3(c2, which2, f2.batch, f2.k, f2.n_, shape)
        if f2.o_layout == prog.y_axes:
            _gemm(z2, c2_3, f2, shape, out=y)
        else:
            _relayout(_gemm(z2, c2_3, f2, shape), f2.o_layout, prog.y_axes, shape, out=y)
        ctx.save_for_backward(xp, a, b, z2)
        ctx.plan, ctx.prog, ctx.shape = plan, prog, shape
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        xp, a, b, z2 = ctx.saved_tensors
        prog, shape = ctx.prog, ctx.shape
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            return (*_reference_grads(xp, a, b, dy, ctx.plan, prog, shape, (need_x, need_a, need_b)),
                    None, None, None)
        f1, f2, b1, b2 = prog.specs()
        which1 = prog.core1
        which2 = "b" if which1 == "a" else "a"
        c1, c2 = (a, b) if which1 == "a" else (b, a)
        need1, need2 = (need_a, need_b) if which1 == "a" else (need_b, need_a)
        dyp = _relayout(dy.contiguous().view([shape[ax] for ax in prog.y_axes]), prog.y_axes, b2.l_layout,
                        shape)
        g1 = g2 = dxp = None
        if need2:  # dC2[B, K2, N2] = z2^T @ dy'
            g3 = _core_gemm(z2, (f2.l_layout, f2.m, f2.k), dyp, (b2.l_layout, b2.m, b2.k), f2.batch, shape)
            g2 = _core_grad(g3, which2, f2.batch, f2.k, b2.k, shape, c2.shape)
        if need1 or need_x:
            dz = _gemm(dyp, _core3(c2, which2, b2.batch, b2.k, b2.n_, shape), b2, shape)
            dz1 = _relayout(dz, b2.o_layout, prog.dz1_layout, shape)
            if need1:  # dC1[B, K1, N1] = x'^T @ dz1
                g3 = _core_gemm(xp, (f1.l_layout, f1.m, f1.k), dz1, (b1.l_layout, b1.m, b1.k), f1.batch, shape)
                g1 = _core_grad(g3, which1, f1.batch, f1.k, b1.k, shape, c1.shape)
            if need_x:  # dx' in the backward's layout, seen with x''s dims
                buf = _gemm(dz1, _core3(c1, which1, b1.batch, b1.k, b1.n_, shape), b1, shape)
                dxp = buf.permute([b1.o_layout.index(ax) for ax in f1.l_layout])
        ga, gb = (g1, g2) if which1 == "a" else (g2, g1)
        return dxp, ga, gb, None, None, None


def _reference_grads(xp, a, b, dy, plan, prog, shape, needs):
    """First-order gradients through the reference path, differentiably (double backward)."""
    n = shape[TOKEN]
    with torch.enable_grad():
        lay = prog.specs()[0].l_layout
        x = xp.permute([lay.index(ax) for ax in prog.x_axes]).reshape(n, plan.d_in_padded)
        s = plan.sizes
        xs = x.reshape(n, s.alpha, s.beta, s.gamma)
        first, second = (a, b) if plan.first == "A" else (b, a)
        z = torch.einsum(plan.eq_first, xs, first)
        y = torch.einsum(plan.eq_second, z, second).reshape(n, plan.d_out_padded)
        inputs = [t for t, need in zip((xp, a, b), needs) if need]
        grads = torch.autograd.grad(y, inputs, dy, create_graph=True, allow_unused=True)
    it = iter(grads)
    return [next(it) if need else None for need in needs]


# ============================================================================ entry point
def run(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """(n, d_in) -> (n, d_out) through the layout-search program; same values and gradients as
    ``einsum_linear_reference`` (x, a, b of one floating dtype)."""
    prog = program(plan)
    if prog.kind in ("identity", "reference"):
        return einsum_linear_reference(x, a, b, plan)
    xp = pad_input(x, plan)
    if prog.kind == "mm":
        w = (a if prog.core1 == "a" else b).reshape(plan.d_in_padded, plan.d_out_padded)
        return crop_output(torch.mm(xp, w), plan)
    shape = dict(prog.sizes)
    shape[TOKEN] = x.shape[0]
    xs = xp.view([shape[ax] for ax in prog.x_axes]) if xp.is_contiguous() else \
        xp.reshape([shape[ax] for ax in prog.x_axes])
    if prog.is_chain:  # two plain row-major GEMMs (low rank): autograd's mm backward is optimal
        f1, f2, _, _ = prog.specs()
        c1, c2 = (a, b) if prog.core1 == "a" else (b, a)
        which2 = "b" if prog.core1 == "a" else "a"
        z = xs.reshape(-1, _prod(shape[ax] for ax in f1.k)) @ _core2d(c1, prog.core1, f1, shape)
        y = z.view(-1, _prod(shape[ax] for ax in f2.k)) @ _core2d(c2, which2, f2, shape)
        return crop_output(y.view(shape[TOKEN], plan.d_out_padded), plan)
    x_layout = prog.specs()[0].l_layout
    if x_layout != prog.x_axes:
        xs = _Relayout.apply(xs, prog.x_axes, x_layout, shape)
    elif not xs.is_contiguous():
        xs = xs.contiguous()
    return crop_output(_TwoStep.apply(xs, a, b, plan, prog, shape), plan)


def _core2d(core: Tensor, which: str, spec: GemmSpec, shape: dict[str, int]) -> Tensor:
    """Core as a [K, N] matrix through differentiable views (for the plain-GEMM chain)."""
    kept = _core_axes(which, shape)
    target = spec.k + spec.n_
    t = core.reshape([shape[ax] for ax in kept]).permute([kept.index(ax) for ax in target])
    return t.reshape(_prod(shape[ax] for ax in spec.k), _prod(shape[ax] for ax in spec.n_))
