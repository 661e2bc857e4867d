"""Architecture search for AutoDistillation: search space -> Optuna study, advisors, trials, Pareto front.

`AutoDistillation` proposes student architectures with an Optuna sampler (the *advisor*), builds each
one with a user ``model_builder``, measures the cheap objectives first (parameters, FLOPs, latency,
via ``profile_func``), trains and evaluates the survivors (``train_func`` / ``eval_func``) and keeps
the results in an Optuna study stored in a database, so that a search can be resumed and several
workers (processes or machines) can share one study.

Modules: :mod:`.loop` (`AutoDistillation`), :mod:`.driver` (study, proposals, turn order between
workers), :mod:`.ledger` (trial statuses, snapshots), :mod:`.storage` (storage URL, SQLite tuning,
heartbeats, dead workers), :mod:`.samplers` (advisor registry), :mod:`.evaluation` (profile, budgets,
objective values), :mod:`.selection` (Pareto front, knee, best arch), :mod:`.results` (rows,
``search_results.json``, `AutoDistillationResult`), :mod:`.oob` (the built-in out-of-the-box functions),
:mod:`.fidelity` and :mod:`.multi_fidelity` (rungs and promotions).

Trial bookkeeping (user attribute ``status`` / Optuna state / counts toward ``max_trials``):

* ``trained`` / COMPLETE / yes: trained and evaluated; ``values`` are the metrics, in config order.
* ``failed`` / FAIL / yes: training or evaluation raised (out of memory included), a metric was NaN or
  missing; the reason is in ``failure_reason``. Final within a ``search_loop`` call; a later call
  retries it once (``retry_failed=True``, the default) and it does not count until then.
* ``invalid`` / PRUNED / no: ``model_builder`` (or ``profile_func``) raised ``InvalidArchitectureError``, or
  the model's forward pass failed on the default profiler's dummy batch (``invalid_reason``). Never
  trained. A model the profiler cannot handle (not an ``nn.Module``, no ``config.vocab_size``) is NOT
  invalid: it is profiled by its parameter count only (one WARNING) and trained.
* ``over_budget`` / PRUNED / no: broke ``max_latency_ms``, ``max_params`` or ``max_flops``
  (``budget_reason``, ``budget_key``, ``profile``). Never trained.
* ``duplicate`` / PRUNED / no: the arch was already evaluated, or is being trained by another trial
  (``duplicate_of`` = that trial's number).
* ``not_needed`` / PRUNED / no: ``max_trials`` was reached before it could start.
* ``training`` / RUNNING / holds a slot: being trained now.
* interrupted / FAIL (``status`` is not ``failed``) / no: its worker died (heartbeat stale, or its pid is
  dead on this host; ``interrupted_reason``) or ``search_loop`` was interrupted. The arch is retried.

Every trial also records ``hostname`` and ``pid``; a trained one records ``model_dir`` when ``eval_func``
returned it.

Duplicates are PRUNED rather than told again with the recorded values: the study then holds each
evaluated architecture once among COMPLETE trials, so samplers are not fed repeated points.

Proposals: an interrupted arch not evaluated since is retried first, then failures of earlier runs
(the new trial gets its params); otherwise the advisor samples; after 3 duplicates in a row, one seeded
random arch not yet covered is proposed, so deterministic advisors cannot spin on an evaluated point.

Concurrent workers (several processes or machines on one storage URL): each trial decides (duplicate?
a ``max_trials`` slot left? invalid? over budget?) only once every lower-numbered RUNNING trial has
decided, so decisions are taken in trial-number order: no arch is trained twice and ``max_trials`` is
never exceeded. A worker whose remaining work is being trained by others waits for them (or for their
trials to go stale). One `AutoDistillation` per storage and process at a time: a RUNNING trial of this
process id that the agent does not drive is taken as left behind by a dead run.

Best architecture: with ``max_latency_ms``, the trained architecture within the latency budget with the
best first metric (ties: later metrics, then lower trial number); otherwise, with one metric, the best
value; with several, the knee of the Pareto front (:func:`knee_point`).

Multi-fidelity (``search.multi_fidelity: {min_fraction, reduction_factor}``, :mod:`.fidelity`,
:mod:`.multi_fidelity`): each rung of a candidate is one trial with user attributes ``rung``, ``budget`` (the
fraction of the per-trial budget trained) and ``parent`` (the trial it was promoted from). Promotion is
asynchronous successive halving by dominance: a free worker promotes, highest rung first, a candidate within
the top ``floor(n / reduction_factor)`` of the ``n`` results of its rung (non-dominated sorting, crowding
distance, trial number) not promoted yet, else starts a new candidate at rung 0. Dedupe, settling and retries
are per (architecture, rung); a promotion keeps its parent's profile (same architecture). ``max_trials`` counts
full-trial equivalents (sum of the budgets of trained and failed trials), never exceeded; until a top-rung
training has started, one full budget is kept for it. Only full-budget rows enter the Pareto front, the best
architecture and ``n_trained``; every rung's rows are in ``search_result`` and ``search_results.json`` (which then
also holds ``multi_fidelity``: settings, ``rung_fractions``, ``budget_spent``, ``trained_per_rung``).
A ``train_func`` with a ``budget`` parameter is called ``train_func(model, budget=fraction)`` (1 without
multi-fidelity); a multi-fidelity search whose ``train_func`` has none is refused when ``search_loop`` starts.
``search.time_budget_s``: no new training starts once that many seconds have passed since ``search_loop``
started; the search then ends with what it has (a rerun continues, with a fresh time budget).

``search_results.json`` (in ``output_dir``, rewritten atomically after every trial) holds
``{"study_name", "search_algorithm", "metrics", "higher_is_better", "max_trials", "n_trained" (trained +
failed, as max_trials counts), "trials": [row, ...], "pareto_front": [row, ...], "best_model_arch",
"best_model_dir", "failure_reasons"}``; ``trials`` (and ``search_result``) has one row per evaluated arch (and rung),
ordered by trial number: trained, failed, invalid and over-budget trials; duplicates, interrupted and
not-needed trials are omitted (they stay in the study). Rows hold ``rung``, ``budget`` and ``parent``.
"""

from ..configs import SEARCH_ALGORITHMS, SearchConfig, parse_search_config
from .loop import AutoDistillation
from .results import RESULTS_FILENAME, AutoDistillationResult
from .samplers import make_advisor
from .selection import knee_point, pareto_front

__all__ = [
    "AutoDistillation",
    "AutoDistillationResult",
    "RESULTS_FILENAME",
    "SEARCH_ALGORITHMS",
    "SearchConfig",
    "knee_point",
    "make_advisor",
    "pareto_front",
    "parse_search_config",
]
