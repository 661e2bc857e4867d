"""Architecture search for AutoDistillation: search space -> Optuna study, advisors, trials, Pareto front.

`AutoDistillation` proposes student architectures with an Optuna sampler (the *advisor*), builds each
one with a user ``model_builder``, measures the cheap objectives first (parameters, FLOPs, latency,
via ``profile_func``), trains and evaluates the survivors (``train_func`` / ``eval_func``) and keeps
the results in an Optuna study stored in a database, so that a search can be resumed and several
workers (processes or machines) can share one study.

Trial bookkeeping (user attribute ``status`` / Optuna state / counts toward ``max_trials``):

* ``trained`` / COMPLETE / yes: trained and evaluated; ``values`` are the metrics, in config order.
* ``failed`` / FAIL / yes: training or evaluation raised (out of memory included), a metric was NaN or
  missing; the reason is in ``failure_reason``. The arch is not retried.
* ``invalid`` / PRUNED / no: ``model_builder`` raised ``InvalidArchitectureError`` or the profiling
  forward pass failed (``invalid_reason``). Never trained.
* ``over_budget`` / PRUNED / no: broke ``max_latency_ms``, ``max_params`` or ``max_flops``
  (``budget_reason``, ``profile``). Never trained.
* ``duplicate`` / PRUNED / no: the arch was already evaluated, or is being trained by another trial
  (``duplicate_of`` = that trial's number).
* ``not_needed`` / PRUNED / no: ``max_trials`` was reached before it could start.
* ``training`` / RUNNING / holds a slot: being trained now.
* interrupted / FAIL (``status`` is not ``failed``) / no: its worker died (heartbeat stale, or its pid is
  dead on this host; ``interrupted_reason``) or ``search_loop`` was interrupted. The arch is retried.

Every trial also records ``hostname`` and ``pid``.

Duplicates are PRUNED rather than told again with the recorded values: the study then holds each
evaluated architecture exactly once among COMPLETE trials, so samplers are not fed repeated points
(the TPE sampler treats pruned trials as unpromising, which steers it away from re-proposals).

Proposals: an interrupted arch not evaluated since is retried first (the new trial gets its params);
otherwise the advisor samples; after 3 duplicates in a row, one seeded random arch not yet covered is
proposed, so deterministic advisors cannot spin on an evaluated point.

Concurrent workers (several processes or machines on one storage URL): each trial decides (duplicate?
a ``max_trials`` slot left? invalid? over budget?) only once every lower-numbered RUNNING trial has
decided, so decisions are taken in trial-number order against a state that cannot change under them:
no arch is trained twice and ``max_trials`` is never exceeded. A worker whose remaining work is being
trained by others waits for them (or for their trials to go stale) instead of stopping, so nothing is
lost when one of them dies.

``search_results.json`` (in ``output_dir``, rewritten atomically after every trial) holds
``{"study_name", "search_algorithm", "metrics", "higher_is_better", "max_trials", "n_trained",
"trials": [row, ...], "pareto_front", "best_model_arch"}``; ``trials`` (and ``search_result``) has one
row per evaluated arch, ordered by trial number: trained, failed, invalid and over-budget trials;
duplicates, interrupted and not-needed trials are omitted (they stay in the study).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import random
import socket
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from .configs.search import SEARCH_ALGORITHMS, SearchConfig, _is_number, parse_search_config
from .errors import ConfigError, InvalidArchitectureError, did_you_mean

logger = logging.getLogger(__name__)

__all__ = ["AutoDistillation", "SearchConfig", "parse_search_config", "pareto_front", "knee_point"]

PROFILE_KEYS = ("params", "flops", "latency")
RESULTS_FILENAME = "search_results.json"
DEFAULT_DB_FILENAME = "autodistill_study.db"

STATUS_TRAINED = "trained"
STATUS_FAILED = "failed"
STATUS_INVALID = "invalid"
STATUS_OVER_BUDGET = "over_budget"
STATUS_DUPLICATE = "duplicate"
STATUS_NOT_NEEDED = "not_needed"
STATUS_TRAINING = "training"
STATUS_INTERRUPTED = "interrupted"

# Trials currently driven by this process: (storage url, trial id). Used to tell our own live trials
# apart from RUNNING trials left behind by a dead run of this same process id.
_ACTIVE_TRIALS: set[tuple[str, int]] = set()
_ACTIVE_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Advisors
# --------------------------------------------------------------------------------------------------


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not call ``study.stop()`` (which raises outside ``study.optimize``).

    The search loop stops by itself once every architecture of the (finite) space was evaluated.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D401 - see class docstring
        return None


def make_advisor(name: str, search_space: Mapping[str, Sequence[Any]], seed: int) -> optuna.samplers.BaseSampler:
    """Return the Optuna sampler for an advisor name (``BO``, ``TPE``, ``NSGA2``, ``random``, ``grid``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "BO":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "TPE":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if name == "NSGA2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return _AskTellGridSampler({k: list(v) for k, v in search_space.items()}, seed=seed)
    raise ConfigError(f"Unknown search algorithm {name!r}; choose one of {list(SEARCH_ALGORITHMS)}." + did_you_mean(name, SEARCH_ALGORITHMS))


# --------------------------------------------------------------------------------------------------
# Pareto front and knee
# --------------------------------------------------------------------------------------------------


def _dominates(a: Sequence[float], b: Sequence[float], higher_is_better: Sequence[bool]) -> bool:
    better_somewhere = False
    for x, y, hib in zip(a, b, higher_is_better):
        if not hib:
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better_somewhere = True
    return better_somewhere


def pareto_front(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points (each objective maximised where ``higher_is_better``)."""
    return [i for i, p in enumerate(points) if not any(_dominates(q, p, higher_is_better) for j, q in enumerate(points) if j != i)]


def knee_point(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> int:
    """Index of the point closest (Euclidean) to the ideal point after min-max normalising each objective.

    Each objective is mapped to [0, 1] with 0 = best value among ``points`` (an objective with no spread
    maps to 0). Ties go to the lowest index.
    """
    if not points:
        raise ValueError("knee_point needs at least one point")
    dims = len(points[0])
    norm = [[0.0] * dims for _ in points]
    for d in range(dims):
        col = [p[d] for p in points]
        lo, hi = min(col), max(col)
        for i, v in enumerate(col):
            if hi == lo:
                continue
            gap = (hi - v) if higher_is_better[d] else (v - lo)
            norm[i][d] = gap / (hi - lo)
    dists = [math.sqrt(sum(x * x for x in row)) for row in norm]
    return min(range(len(points)), key=lambda i: (dists[i], i))


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _arch_key(arch: Mapping[str, Any]) -> str:
    return json.dumps({k: arch[k] for k in sorted(arch)}, sort_keys=True)


def _jsonable(value: Any) -> Any:
    """Convert metric values (numpy/torch scalars, nested dicts) to JSON-friendly Python objects."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f) or math.isinf(f):
        return str(f)  # JSON has no NaN/inf; keep it readable
    return f


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _atomic_write_json(path: str, data: Any) -> None:
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _tune_sqlite(storage: Any) -> None:
    """WAL journal + synchronous=NORMAL: a commit costs no fsync, readers do not block the writer.

    Safe for several processes on one host (not on a network file system, where SQLite is unsafe anyway).
    """
    from sqlalchemy import event

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        except Exception as exc:  # another process holds a lock: keep the defaults
            logger.debug("could not tune SQLite: %s", exc)
        finally:
            cur.close()

    engine = getattr(storage, "engine", None)
    if engine is None:
        return
    event.listen(engine, "connect", on_connect)
    engine.dispose()  # pooled connections were opened before the listener


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Heartbeat:
    """Background thread recording a trial's heartbeat in an RDB storage every ``interval`` seconds."""

    def __init__(self, storage: Any, trial_id: int, interval: int | None) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._interval or not hasattr(self._storage, "record_heartbeat"):
            return
        self._thread = threading.Thread(target=self._run, name=f"autodistill-heartbeat-{self._trial_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # a transient DB error must not kill the worker
                logger.debug("heartbeat of trial id %s failed: %s", self._trial_id, exc)
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@dataclasses.dataclass
class _Snapshot:
    """Classification of the study's trials at one moment."""

    settled: dict[str, int]  # arch key -> number of the trial that settled it (trained/failed/invalid/over budget)
    training: dict[str, int]  # arch key -> number of a RUNNING trial that is training it
    interrupted: dict[str, dict[str, Any]]  # arch key -> arch of an interrupted trial (first one)
    undecided: list[int]  # numbers of RUNNING trials that have not decided yet
    n_counted: int  # trained + failed distinct archs
    n_training: int


# --------------------------------------------------------------------------------------------------
# AutoDistillation
# --------------------------------------------------------------------------------------------------


class AutoDistillation:
    """Search student architectures with an Optuna sampler and keep the best one.

    Args:
        model_builder: ``model_builder(arch: dict) -> model``; raises
            :class:`~autodistill_trainer.errors.InvalidArchitectureError` for archs it cannot build.
        config: AutoDistillation config (see :func:`parse_search_config`).
        train_func: ``train_func(model) -> trained model`` (``None`` return = trained in place). Optional:
            without it, the built model is evaluated as is.
        eval_func: ``eval_func(model) -> {metric: value}``; metrics missing from its result but present in
            the profile (``latency``, ``params``, ``flops``) are taken from the profile.
        profile_func: ``profile_func(model) -> {"params", "flops", "latency", ...}``; default
            :func:`autodistill_trainer.profiling.profile_model`.
        output_dir: where ``search_results.json`` (and the default SQLite study) are written.

    Attributes:
        search_space, model_builder, advisor (the Optuna sampler), train_func, eval_func, config (the raw
        config), search_config (validated :class:`SearchConfig`), search_result (list of row dicts),
        best_model_arch (dict or None), pareto_front (list of ``{"arch", "metrics", "number"}``), study
        (the Optuna study; created on first access, ``None`` on non-zero distributed ranks),
        hostname (recorded in each trial with the pid; dead-pid detection only applies to the same hostname).

    Rules:
        * ``max_trials`` counts distinct architectures that were trained (completed or failed), over the
          whole study (all workers and earlier runs of a resumed search). Duplicates, invalid and
          over-budget archs, and trials interrupted by a dead worker do not count.
        * ``best_model_arch``: with ``max_latency_ms`` set, the completed trial within the latency budget
          with the best first metric (ties: later metrics, then lower trial number); otherwise, with one
          metric, the best value; with several, the knee of the Pareto front (:func:`knee_point`).
    """

    def __init__(
        self,
        model_builder: Callable[[dict[str, Any]], Any],
        config: Mapping[str, Any],
        train_func: Callable[[Any], Any] | None = None,
        eval_func: Callable[[Any], Mapping[str, Any]] | None = None,
        profile_func: Callable[[Any], Mapping[str, Any]] | None = None,
        output_dir: str = ".",
    ) -> None:
        self.config = config
        self.search_config: SearchConfig = parse_search_config(config)
        self.search_space: dict[str, list[Any]] = self.search_config.search_space
        self.model_builder = model_builder
        self.train_func = train_func
        self.eval_func = eval_func
        self.profile_func = profile_func
        self.output_dir = output_dir
        self.advisor: optuna.samplers.BaseSampler = make_advisor(
            self.search_config.search_algorithm, self.search_space, self.search_config.seed
        )
        self.search_result: list[dict[str, Any]] = []
        self.best_model_arch: dict[str, Any] | None = None
        self.pareto_front: list[dict[str, Any]] = []
        self.hostname: str = socket.gethostname()
        self.poll_interval: float = 0.2
        self._study: optuna.Study | None = None
        self._storage_url: str | None = None
        self._distributions = {k: CategoricalDistribution(v) for k, v in self.search_space.items()}
        self._current: dict[str, Any] | None = None  # the trial proposed by model_arch_proposition
        self._consecutive_duplicates = 0
        self._fallback_rng = random.Random(self.search_config.seed)

    # ---------------------------------------------------------------------------------------- study

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL (default: ``sqlite:///{output_dir}/autodistill_study.db``)."""
        if self._storage_url is None:
            url = self.search_config.storage
            if url is None:
                os.makedirs(self.output_dir, exist_ok=True)
                url = f"sqlite:///{os.path.abspath(os.path.join(self.output_dir, DEFAULT_DB_FILENAME))}"
            self._storage_url = url
        return self._storage_url

    @property
    def study_name(self) -> str:
        return self.search_config.study_name or "autodistill"

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study (created, or loaded when it exists, on first access)."""
        if self._study is None:
            rank, world = _dist_rank_world()
            if world > 1 and rank != 0:
                return None
            self._study = self._create_study()
        return self._study

    @study.setter
    def study(self, value: optuna.Study | None) -> None:
        self._study = value

    @property
    def grace_period(self) -> int | None:
        """Seconds without heartbeat before a RUNNING trial is failed (default ``max(60, 3 * heartbeat_interval)``)."""
        cfg = self.search_config
        if not cfg.heartbeat_interval:
            return None
        return cfg.grace_period if cfg.grace_period is not None else max(60, 3 * cfg.heartbeat_interval)

    def _make_storage(self) -> optuna.storages.BaseStorage:
        url = self.storage_url
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
        else:
            engine_kwargs["pool_pre_ping"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=self.search_config.heartbeat_interval,
                grace_period=self.grace_period,
            )
        if url.startswith("sqlite"):
            _tune_sqlite(storage)
        return storage

    def _create_study(self) -> optuna.Study:
        last_exc: Exception | None = None
        for attempt in range(5):  # concurrent first creation can race on the schema (SQLite)
            try:
                storage = self._make_storage()
                study = optuna.create_study(
                    storage=storage,
                    sampler=self.advisor,
                    study_name=self.study_name,
                    directions=self.search_config.directions,
                    load_if_exists=True,
                )
                break
            except ConfigError:
                raise
            except Exception as exc:  # sqlalchemy OperationalError / IntegrityError on a race
                last_exc = exc
                logger.warning("creating study %r failed (%s), retrying", self.study_name, exc)
                time.sleep(0.5 * (attempt + 1))
        else:
            raise RuntimeError(f"could not create or load study {self.study_name!r} in {self.storage_url}") from last_exc
        expected = [optuna.study.StudyDirection.MAXIMIZE if h else optuna.study.StudyDirection.MINIMIZE for h in self.search_config.higher_is_better]
        if list(study.directions) != expected:
            raise ConfigError(
                f"Study {self.study_name!r} in {self.storage_url} has directions {[d.name for d in study.directions]}, "
                f"but 'search.metrics'/'search.higher_is_better' give {[d.name for d in expected]}; use another 'search.study_name'."
            )
        attrs = study.user_attrs
        if "search_space" not in attrs:
            try:
                study.set_user_attr("search_space", self.search_space)
                study.set_user_attr("metrics", self.search_config.metrics)
            except Exception:  # pragma: no cover - cosmetic
                pass
        elif attrs["search_space"] != self.search_space:
            logger.warning("study %r was created with another search space %s; resuming it with %s", self.study_name, attrs["search_space"], self.search_space)
        return study

    # ----------------------------------------------------------------------------------- snapshots

    def _trial_arch(self, t: FrozenTrial) -> dict[str, Any] | None:
        if not all(k in t.params for k in self.search_space):
            return None
        return {k: t.params[k] for k in self.search_space}

    @staticmethod
    def _status(t: FrozenTrial) -> str | None:
        status = t.user_attrs.get("status")
        if t.state == TrialState.COMPLETE:
            return STATUS_TRAINED
        if t.state == TrialState.FAIL:
            return STATUS_FAILED if status == STATUS_FAILED else STATUS_INTERRUPTED
        return status

    def _snapshot(self, trials: Sequence[FrozenTrial] | None = None, exclude_number: int | None = None) -> _Snapshot:
        if trials is None:
            trials = self.study.get_trials(deepcopy=False)
        settled: dict[str, int] = {}
        training: dict[str, int] = {}
        interrupted: dict[str, dict[str, Any]] = {}
        undecided: list[int] = []
        counted: set[str] = set()
        for t in sorted(trials, key=lambda t: t.number):
            if t.number == exclude_number:
                continue
            status = self._status(t)
            arch = self._trial_arch(t)
            key = _arch_key(arch) if arch is not None else None
            if t.state == TrialState.RUNNING:
                if status == STATUS_TRAINING and key is not None:
                    training.setdefault(key, t.number)
                else:
                    undecided.append(t.number)
                continue
            if key is None:
                continue
            if status in (STATUS_TRAINED, STATUS_FAILED):
                settled.setdefault(key, t.number)
                counted.add(key)
            elif status in (STATUS_INVALID, STATUS_OVER_BUDGET):
                settled.setdefault(key, t.number)
            elif status == STATUS_INTERRUPTED:
                interrupted.setdefault(key, arch)
        interrupted = {k: a for k, a in interrupted.items() if k not in settled and k not in training}
        n_training = sum(1 for k in training if k not in counted)
        return _Snapshot(settled, training, interrupted, undecided, len(counted), n_training)

    # ------------------------------------------------------------------------------- stale trials

    def fail_stale_trials(self) -> None:
        """Fail RUNNING trials whose worker is gone, so that their archs get retried.

        Two mechanisms: Optuna's heartbeat (a trial silent for longer than ``grace_period`` is failed by
        :func:`optuna.storages.fail_stale_trials`; works across machines), and, for trials recorded by
        this host, a dead (or zombie) pid, or this very process id for a trial it is not driving
        (immediate, no grace period). Such trials are FAIL without ``status == "failed"``: they are
        *interrupted*, do not count, and their archs are proposed again.
        """
        study = self.study
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        except Exception as exc:  # pragma: no cover - storage hiccup
            logger.debug("fail_stale_trials failed: %s", exc)
        storage = study._storage
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            with _ACTIVE_LOCK:
                if (self.storage_url, t._trial_id) in _ACTIVE_TRIALS:
                    continue
            host, pid = t.user_attrs.get("hostname"), t.user_attrs.get("pid")
            if host != self.hostname or not isinstance(pid, int):
                continue
            if pid != os.getpid() and _pid_alive(pid):
                continue
            reason = f"worker pid {pid} on {host} is gone"
            try:
                storage.set_trial_user_attr(t._trial_id, "interrupted_reason", reason)
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    logger.warning("trial %d (%s) was left RUNNING by a dead worker (%s): marked failed, its arch will be retried", t.number, t.params, reason)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                pass

    # --------------------------------------------------------------------------------- proposing

    def _unseen_arch(self, covered: Iterable[str], number: int) -> dict[str, Any] | None:
        """A random arch not in ``covered`` (seeded), or None when every arch is covered."""
        covered = set(covered)
        rng = random.Random(self.search_config.seed * 1_000_003 + number)
        names = list(self.search_space)
        if self.search_config.space_size <= 200_000:
            candidates = [dict(zip(names, vals)) for vals in itertools.product(*(self.search_space[n] for n in names))]
            candidates = [a for a in candidates if _arch_key(a) not in covered]
            return rng.choice(candidates) if candidates else None
        for _ in range(2000):
            arch = {n: rng.choice(self.search_space[n]) for n in names}
            if _arch_key(arch) not in covered:
                return arch
        return None

    def model_arch_proposition(self, fixed_arch: Mapping[str, Any] | None = None, **user_attrs: Any) -> dict[str, Any]:
        """Ask the study for a new trial and return its architecture ``{name: value}``.

        The advisor samples every search-space entry with ``suggest_categorical``; with ``fixed_arch``
        the trial gets those values instead (used to retry interrupted archs). The trial stays RUNNING
        (with a heartbeat) until :meth:`search_loop` finishes it.
        """
        study = self.study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
            trial = study.ask()
        storage = study._storage
        with _ACTIVE_LOCK:
            _ACTIVE_TRIALS.add((self.storage_url, trial._trial_id))
        heartbeat = _Heartbeat(storage, trial._trial_id, self.search_config.heartbeat_interval)
        heartbeat.start()
        trial.set_user_attr("hostname", self.hostname)
        trial.set_user_attr("pid", os.getpid())
        for k, v in user_attrs.items():
            trial.set_user_attr(k, v)
        if fixed_arch is not None:
            for name, dist in self._distributions.items():
                storage.set_trial_param(trial._trial_id, name, dist.to_internal_repr(fixed_arch[name]), dist)
            arch = {k: fixed_arch[k] for k in self.search_space}
        else:
            arch = {name: trial.suggest_categorical(name, values) for name, values in self.search_space.items()}
        self._current = {"trial": trial, "heartbeat": heartbeat, "arch": arch}
        return arch

    def _release(self) -> None:
        cur = self._current
        if cur is None:
            return
        cur["heartbeat"].stop()
        with _ACTIVE_LOCK:
            _ACTIVE_TRIALS.discard((self.storage_url, cur["trial"]._trial_id))
        self._current = None

    def _finish(self, state: TrialState, values: Sequence[float] | None = None, **attrs: Any) -> bool:
        """Record ``attrs`` and tell the current trial. False when another worker already finished it."""
        cur = self._current
        assert cur is not None
        trial = cur["trial"]
        ok = True
        try:
            for k, v in attrs.items():
                trial.set_user_attr(k, _jsonable(v))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.study.tell(trial, values=values, state=state)
        except Exception as exc:
            ok = False
            logger.warning("could not record trial %d (%s): %s; another worker probably failed it as stale, the arch will be retried", trial.number, cur["arch"], exc)
        finally:
            self._release()
        return ok

    def _wait_for_turn(self, number: int) -> _Snapshot:
        """Wait until every lower-numbered RUNNING trial has decided (trains, or finished).

        Decisions (duplicate? slot left under max_trials?) are thus taken in trial-number order across
        workers, against a state that cannot change under them, so no arch is trained twice and
        max_trials is never exceeded.
        """
        start = time.monotonic()
        warned = False
        while True:
            snap = self._snapshot(exclude_number=number)
            blocking = [n for n in snap.undecided if n < number]
            if not blocking:
                return snap
            if not warned and time.monotonic() - start > 60:
                logger.warning("trial %d waits for trials %s to decide (a worker may be stuck; stale trials are failed after the grace period)", number, blocking)
                warned = True
            time.sleep(self.poll_interval)
            self.fail_stale_trials()

    def _next_candidate(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """Propose until an arch worth building is found (returns it, its trial RUNNING) or the search ends."""
        cfg = self.search_config
        while True:
            self.fail_stale_trials()
            snap = self._snapshot()
            if snap.n_counted >= cfg.max_trials:
                logger.info("max_trials=%d trained architectures reached", cfg.max_trials)
                return None
            if len(snap.settled) >= cfg.space_size:
                logger.info("every architecture of the search space (%d) has been evaluated", cfg.space_size)
                return None
            if state["proposals"] >= state["max_proposals"]:
                logger.warning("stopping after %d proposals without reaching max_trials=%d (the advisor keeps proposing evaluated architectures)", state["proposals"], cfg.max_trials)
                return None
            covered = set(snap.settled) | set(snap.training)
            if snap.n_counted + snap.n_training >= cfg.max_trials or (len(covered) >= cfg.space_size and not snap.interrupted):
                # the rest is being trained by other workers: wait for them (or for their trials to go stale)
                if "waiting_since" not in state:
                    state["waiting_since"] = time.monotonic()
                    logger.info("waiting for trials %s being trained by other workers", sorted(snap.training.values()))
                elif time.monotonic() - state["waiting_since"] > 300 and not state.get("wait_warned"):
                    state["wait_warned"] = True
                    logger.warning("still waiting for trials %s of other workers after 5 min (without a heartbeat, dead workers are never detected)", sorted(snap.training.values()))
                time.sleep(max(self.poll_interval, 0.5))
                continue
            state.pop("waiting_since", None)
            state["proposals"] += 1
            if snap.interrupted:
                arch = next(iter(snap.interrupted.values()))
                self.model_arch_proposition(fixed_arch=arch, proposed_by="retry")
            elif self._consecutive_duplicates >= 3:
                fallback = self._unseen_arch(covered, state["proposals"])
                if fallback is None:
                    continue
                self.model_arch_proposition(fixed_arch=fallback, proposed_by="random_fallback")
            else:
                self.model_arch_proposition()
            trial, arch = self._current["trial"], self._current["arch"]
            snap = self._wait_for_turn(trial.number)
            key = _arch_key(arch)
            if key in snap.settled or key in snap.training:
                original = snap.settled.get(key, snap.training.get(key))
                logger.info("trial %d: %s already evaluated by trial %d, not retrained", trial.number, arch, original)
                self._finish(TrialState.PRUNED, status=STATUS_DUPLICATE, duplicate_of=original)
                self._consecutive_duplicates += 1
                continue
            if snap.n_counted + snap.n_training >= cfg.max_trials:
                self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
                continue
            self._consecutive_duplicates = 0
            return {"number": trial.number, "arch": arch}

    # --------------------------------------------------------------------------------- evaluating

    def _profile(self, model: Any) -> dict[str, Any]:
        if self.profile_func is not None:
            return dict(self.profile_func(model))
        try:
            from .profiling import profile_model
        except ImportError:
            logger.warning("autodistill_trainer.profiling is unavailable: only the parameter count is measured")
            return {"params": int(sum(p.numel() for p in model.parameters()))}
        return dict(profile_model(model))

    def _budget_violation(self, profile: Mapping[str, Any]) -> str | None:
        cfg = self.search_config
        for key, budget, unit in (("latency", cfg.max_latency_ms, " ms"), ("params", cfg.max_params, ""), ("flops", cfg.max_flops, "")):
            if budget is None:
                continue
            if key not in profile or profile[key] is None:
                logger.warning("budget on %s cannot be checked: the profile has no %r", key, key)
                continue
            if float(profile[key]) > budget:
                return f"{key} {profile[key]:g}{unit} > budget {budget:g}{unit}"
        return None

    def train_evaluate(self, model: Any) -> dict[str, Any]:
        """Train ``model`` with ``train_func`` (its return value, or ``model`` when it returns None) and
        return ``eval_func``'s metrics (a bare number is taken as the single metric)."""
        trained = model
        if self.train_func is not None:
            out = self.train_func(model)
            trained = model if out is None else out
        if self.eval_func is None:
            return {}
        metrics = self.eval_func(trained)
        if _is_number(metrics) or (hasattr(metrics, "item") and not isinstance(metrics, Mapping)):
            metrics = {self.search_config.metrics[0]: float(metrics)}
        if not isinstance(metrics, Mapping):
            raise TypeError(f"eval_func must return a dict of metrics, got {type(metrics).__name__}")
        return dict(metrics)

    def _objective_values(self, metrics: dict[str, Any], profile: Mapping[str, Any]) -> list[float]:
        values = []
        for name in self.search_config.metrics:
            if name not in metrics and name in profile:
                metrics[name] = profile[name]
            if name not in metrics:
                raise KeyError(f"metric {name!r} is missing from eval_func's results {sorted(metrics)} and from the profile")
            v = float(metrics[name])
            if math.isnan(v):
                raise ValueError(f"metric {name!r} is NaN")
            values.append(v)
        return values

    # -------------------------------------------------------------------------------- main loop

    def search_loop(self) -> dict[str, Any] | None:
        """Run the search and return ``best_model_arch``.

        Stops when ``max_trials`` distinct architectures were trained, when every architecture of the
        space was evaluated, or after ``20 * max_trials + 100`` proposals in this call (with a warning).
        Under ``torch.distributed`` (world size > 1) rank 0 drives the study and broadcasts each arch;
        every rank builds and trains it (``train_func``/``eval_func`` may be collective).
        """
        cfg = self.search_config
        if self.eval_func is None and any(m not in PROFILE_KEYS for m in cfg.metrics):
            raise ConfigError(f"eval_func is required to measure metrics {[m for m in cfg.metrics if m not in PROFILE_KEYS]} ('search.metrics').")
        rank, world = _dist_rank_world()
        is_main = rank == 0
        if world > 1:
            import torch.distributed as dist

            def bcast(obj: Any) -> Any:
                box = [obj]
                dist.broadcast_object_list(box, src=0)
                return box[0]

            def gather(obj: Any) -> list[Any]:
                out: list[Any] = [None] * world
                dist.all_gather_object(out, obj)
                return out
        else:

            def bcast(obj: Any) -> Any:
                return obj

            def gather(obj: Any) -> list[Any]:
                return [obj]

        from transformers import set_seed

        if is_main and self._current is not None:  # a proposal made by a direct model_arch_proposition() call
            logger.info("discarding the pending proposal %s (trial %d) before searching", self._current["arch"], self._current["trial"].number)
            self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
        bar = None
        state = {"proposals": 0, "max_proposals": 20 * cfg.max_trials + 100}
        if is_main:
            from tqdm.auto import tqdm

            self.fail_stale_trials()
            bar = tqdm(total=cfg.max_trials, initial=min(self._snapshot().n_counted, cfg.max_trials), desc="autodistill search", unit="trial")
        try:
            while True:
                candidate: dict[str, Any] | None = None
                error: BaseException | None = None
                if is_main:
                    try:
                        candidate = self._next_candidate(state)
                    except BaseException as exc:  # tell the other ranks before raising
                        error, candidate = exc, {"error": f"{type(exc).__name__}: {exc}"}
                candidate = bcast(candidate)
                if error is not None:
                    raise error
                if candidate is None:
                    break
                if "error" in candidate:
                    raise RuntimeError(f"rank 0 failed while proposing an architecture: {candidate['error']}")
                arch = candidate["arch"]
                t0 = time.monotonic()
                set_seed(cfg.seed)
                model, invalid = None, None
                try:
                    model = self.model_builder(dict(arch))
                except InvalidArchitectureError as exc:
                    invalid = f"InvalidArchitectureError: {exc}"
                decision: dict[str, Any] = {"action": "skip"}
                if is_main:
                    try:
                        decision = self._after_build(model, invalid, arch, candidate["number"])
                    except BaseException as exc:
                        error, decision = exc, {"action": "error", "error": f"{type(exc).__name__}: {exc}"}
                decision = bcast(decision)
                if error is not None:
                    raise error
                if decision["action"] == "error":
                    raise RuntimeError(f"rank 0 failed after building {arch}: {decision['error']}")
                if decision["action"] != "train":
                    del model
                    continue
                failure = None
                metrics: dict[str, Any] = {}
                try:
                    metrics = self.train_evaluate(model)
                except Exception as exc:  # includes torch.cuda.OutOfMemoryError
                    failure = f"{type(exc).__name__}: {exc}"
                    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
                        failure = f"out of memory: {failure}"
                    logger.warning("trial %d %s failed: %s", candidate["number"], arch, failure, exc_info=logger.isEnabledFor(logging.DEBUG))
                    _empty_cuda_cache()
                failures = gather(failure)
                del model
                if is_main:
                    failure = next((f"rank {r}: {f}" if world > 1 else f for r, f in enumerate(failures) if f), None)
                    self._record_trained(candidate, decision["profile"], metrics, failure, time.monotonic() - t0)
                    bar.n = min(self._snapshot().n_counted, cfg.max_trials)
                    bar.refresh()
        finally:
            if is_main:
                if self._current is not None:  # interrupted mid-trial (exception or KeyboardInterrupt)
                    self._finish(TrialState.FAIL, status=STATUS_INTERRUPTED, interrupted_reason="search_loop was interrupted")
                if bar is not None:
                    bar.close()
        result = None
        if is_main:
            self._collect_results()
            result = {"search_result": self.search_result, "pareto_front": self.pareto_front, "best_model_arch": self.best_model_arch}
        result = bcast(result)
        self.search_result, self.pareto_front, self.best_model_arch = result["search_result"], result["pareto_front"], result["best_model_arch"]
        if is_main:
            logger.info("search finished: %d rows, Pareto front of %d, best arch %s", len(self.search_result), len(self.pareto_front), self.best_model_arch)
        return self.best_model_arch

    def _after_build(self, model: Any, invalid: str | None, arch: dict[str, Any], number: int) -> dict[str, Any]:
        """Rank 0: record an invalid build, profile the model, apply budgets. Returns the decision."""
        if invalid is None:
            try:
                profile = self._profile(model)
            except Exception as exc:
                invalid = f"profiling failed ({type(exc).__name__}: {exc})"
        if invalid is not None:
            logger.info("trial %d: %s is invalid (%s), not trained", number, arch, invalid)
            self._finish(TrialState.PRUNED, status=STATUS_INVALID, invalid_reason=invalid)
            self._collect_results()
            return {"action": "skip"}
        profile = _jsonable(profile)
        violation = self._budget_violation(profile)
        if violation is not None:
            logger.info("trial %d: %s breaks the budget (%s), not trained", number, arch, violation)
            self._finish(TrialState.PRUNED, status=STATUS_OVER_BUDGET, budget_reason=violation, profile=profile)
            self._collect_results()
            return {"action": "skip"}
        trial = self._current["trial"]
        trial.set_user_attr("profile", profile)
        trial.set_user_attr("status", STATUS_TRAINING)  # releases the decision order for later trials
        return {"action": "train", "profile": profile}

    def _record_trained(self, candidate: dict[str, Any], profile: dict[str, Any], metrics: dict[str, Any], failure: str | None, duration: float) -> None:
        values = None
        if failure is None:
            try:
                values = self._objective_values(metrics, profile)
            except (KeyError, ValueError, TypeError) as exc:
                failure = str(exc).strip("'\"")
        metrics = _jsonable(metrics)
        if failure is None:
            self._finish(TrialState.COMPLETE, values, status=STATUS_TRAINED, metrics=metrics, duration_s=round(duration, 3))
        else:
            self._finish(TrialState.FAIL, status=STATUS_FAILED, failure_reason=failure, metrics=metrics, duration_s=round(duration, 3))
        n = self._snapshot().n_counted
        shown = {m: metrics.get(m) for m in self.search_config.metrics} if failure is None else failure
        logger.info("trial %d/%d (#%d) %s -> %s in %.1fs", n, self.search_config.max_trials, candidate["number"], candidate["arch"], shown, duration)
        self._collect_results()

    # ----------------------------------------------------------------------------------- results

    def _rows(self, trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
        rows = []
        for t in sorted(trials, key=lambda t: t.number):
            status = self._status(t)
            if t.state == TrialState.RUNNING or status not in (STATUS_TRAINED, STATUS_FAILED, STATUS_INVALID, STATUS_OVER_BUDGET):
                continue
            arch = self._trial_arch(t)
            if arch is None:
                continue
            profile = t.user_attrs.get("profile") or {}
            metrics = t.user_attrs.get("metrics")
            if status == STATUS_TRAINED:
                metrics = dict(metrics or {})
                for name, v in zip(self.search_config.metrics, t.values or []):
                    metrics.setdefault(name, v)
            reason = t.user_attrs.get("failure_reason") or t.user_attrs.get("invalid_reason") or t.user_attrs.get("budget_reason")
            rows.append(
                {
                    "number": t.number,
                    "arch": arch,
                    "status": status,
                    "state": t.state.name,
                    "metrics": metrics if status in (STATUS_TRAINED, STATUS_FAILED) else None,
                    "params": profile.get("params"),
                    "flops": profile.get("flops"),
                    "latency": profile.get("latency"),
                    "duration_s": t.user_attrs.get("duration_s"),
                    "failure_reason": reason,
                    "worker": f"{t.user_attrs.get('hostname')}:{t.user_attrs.get('pid')}",
                }
            )
        # each arch once (a resumed study with concurrent workers could still hold two settled rows)
        seen: set[str] = set()
        unique = []
        for row in rows:
            key = _arch_key(row["arch"])
            if key not in seen:
                seen.add(key)
                unique.append(row)
        return unique

    def _select(self, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        cfg = self.search_config
        done = [r for r in rows if r["status"] == STATUS_TRAINED]
        if not done:
            return [], None
        points = [[float(r["metrics"][m]) for m in cfg.metrics] for r in done]
        front_idx = pareto_front(points, cfg.higher_is_better)
        sign = [1.0 if h else -1.0 for h in cfg.higher_is_better]

        def rank_key(i: int) -> tuple:
            return tuple(-s * v for s, v in zip(sign, points[i])) + (done[i]["number"],)

        front_idx.sort(key=rank_key)
        front = [{"arch": done[i]["arch"], "metrics": done[i]["metrics"], "number": done[i]["number"]} for i in front_idx]
        best: int | None = None
        if cfg.max_latency_ms is not None:
            within = []
            for i, r in enumerate(done):
                lat = r["metrics"].get("latency", r["latency"])
                if lat is not None and float(lat) <= cfg.max_latency_ms:
                    within.append(i)
            if within:
                best = min(within, key=rank_key)
            else:
                logger.warning("no completed trial is within max_latency_ms=%g; best_model_arch falls back to the Pareto knee", cfg.max_latency_ms)
        if best is None:
            if len(cfg.metrics) == 1:
                best = min(range(len(done)), key=rank_key)
            else:
                best = front_idx[knee_point([points[i] for i in front_idx], cfg.higher_is_better)]
        return front, dict(done[best]["arch"])

    def _collect_results(self) -> None:
        """Refresh ``search_result``, ``pareto_front`` and ``best_model_arch`` from the study and rewrite
        ``search_results.json`` atomically."""
        trials = self.study.get_trials(deepcopy=False)
        self.search_result = self._rows(trials)
        self.pareto_front, self.best_model_arch = self._select(self.search_result)
        cfg = self.search_config
        data = {
            "study_name": self.study_name,
            "search_algorithm": cfg.search_algorithm,
            "metrics": cfg.metrics,
            "higher_is_better": cfg.higher_is_better,
            "max_trials": cfg.max_trials,
            "n_trained": sum(1 for r in self.search_result if r["status"] in (STATUS_TRAINED, STATUS_FAILED)),
            "trials": self.search_result,
            "pareto_front": self.pareto_front,
            "best_model_arch": self.best_model_arch,
        }
        os.makedirs(self.output_dir, exist_ok=True)
        _atomic_write_json(os.path.join(self.output_dir, RESULTS_FILENAME), _jsonable(data))


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
