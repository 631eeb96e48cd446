"""``einsearch explore``: search the whole theta space with Optuna (docs/design.md section 9).

Parametrisation. A trial samples five numbers on a grid of step 1/``grid`` (default 1/8, so
equivalent thetas collide instead of differing in the 7th digit): ``in_1, in_2`` in [0, 1]
are sorted (a <= b) and give (alpha, beta, gamma) = (a, b - a, 1 - b), uniform on the input
simplex; ``out_1, out_2`` give (delta, epsilon, phi) the same way; ``rho`` in [0, 1]. Every
valid theta is reachable. Each theta is folded to its canonical form (``Theta.canonical()``)
and keyed by the canonical text, which is also the ``structure`` of its training runs:

* a canonical theta already scored by a finished trial is not trained again: the trial
  reuses that result (user attr ``duplicate_of``); its runs are in the results store anyway;
* a degenerate theta (rho > min(alpha, epsilon): extra rank that adds cost and no
  expressivity) is flagged (user attr ``degenerate``) and, with ``degenerate: prune``
  (default), pruned without training: the same theta with rho = min(alpha, epsilon) expresses
  the same maps for less compute, so it can never be the best; ``degenerate: score`` trains
  and scores it like any other;
* the canonical dense theta scores exactly 1 (it is the reference).

Objective. The compute multiplier over dense (maximised) of the theta on a small fixed sweep
(the preset's widths x seeds x lrs x train settings), estimated by :func:`score_structure`
(the pipeline's estimator, :mod:`einsearch.search.analysis`). Dense's reference runs are
trained once per study, before the first trial, and reused from the results store
``DIR/results.sqlite`` like every other run. The preset's ``widths`` are dense's; with
``match_compute: true`` (the default) a trial's theta trains, for each dense width, at the
width whose training FLOPs per token is closest to dense's there (the sweep's rule,
:meth:`einsearch.search.sweep.SweepSpec.matched_widths`), so its frontier covers dense's
compute window; ``false`` trains it at dense's widths. Every run (dense's and the trials')
uses muP's ``base_width`` = dense's smallest width unless ``train.base_width`` is set.
``--objective multiplier+params`` adds a second objective, the parameter count relative to
dense at dense's largest width, the theta taken at its width matched to it (at equal compute
with ``match_compute``, else at equal width; minimised), for a Pareto front; multi-objective
studies cannot prune (Optuna has no multi-objective pruner), so every trial there trains all
its widths.

Pruning over compute. Trials run in batches of the executor's concurrency; the runs of a batch
are trained width by width in dense's width order, smallest first (step i: each theta at its
width matched to dense's i-th). After each step but the last, every trial of the batch reports
its multiplier on the runs so far (``trial.report``, step = dense width index: dense's widths up
to the i-th against the theta's matched ones) and a ``MedianPruner`` stops trials that are below
the median of earlier trials at that step.

Resuming. The study lives in an Optuna storage (``sqlite:///DIR/explore.db`` by default,
any Optuna storage URL with ``storage=``; the study name is fixed per preset, so several
drivers can share one study). A driver killed at any moment leaves its trials RUNNING; the
next driver on the same host marks them FAIL (their process is gone) and enqueues a retry of
each; trials of a driver on another host are failed and retried once their heartbeat is stale.
The retried trial trains nothing that finished: every finished run is in the results store.
``trials`` is the total number of finished (complete or pruned) trials the study should hold.

Outputs: ``DIR/explore.json`` (every trial) written atomically after every batch, and at the
end ``DIR/explore.md`` with ``explore_objective.png`` and ``explore_taxonomy.png``.

Modules: :mod:`~.spec` (what a trial trains), :mod:`~.space` (five numbers <-> theta),
:mod:`~.objective` (the score), :mod:`~.study` (the ask -> train -> tell loop), :mod:`~.outputs`
(explore.json, explore.md, plots).
"""

from .objective import score_structure
from .outputs import write_outputs
from .space import named_as, params_from_theta, theta_from_params
from .spec import DEGENERATE_RULES, OBJECTIVES, ExploreSpec, explore_preset_names, load_explore_spec
from .study import ExploreOutcome, explore

__all__ = ["ExploreSpec", "ExploreOutcome", "load_explore_spec", "explore_preset_names",
           "explore", "score_structure", "theta_from_params", "params_from_theta", "named_as",
           "write_outputs", "OBJECTIVES", "DEGENERATE_RULES"]
