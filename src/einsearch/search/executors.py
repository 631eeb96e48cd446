"""Executors: where the training runs of a sweep or a search execute.

An :class:`Executor` takes a list of run configs (``TrainConfig``) and yields one
:class:`RunOutcome` per config as the runs finish, in completion order. Executors only TRAIN:
the driver (the process that called :func:`einsearch.search.sweep.run_sweep` or the explore
loop) writes every result into the results store, so SQLite never has concurrent writers
(docs/design.md section 6).

* :class:`LocalExecutor` ``(jobs)``: ``jobs=1`` trains in this process; ``jobs>1`` keeps
  ``jobs`` runs in flight in a pool of spawned worker processes.
* :class:`RayExecutor` ``(address=None, num_cpus=None)``: each run is a Ray remote task, on an
  existing cluster (``address``) or on a local one started on the loopback address with the
  dashboard and usage statistics off.

A worker that dies mid-run (killed for memory, a segfault, a lost node) loses that run only:
it is retried up to ``max_retries`` times, then recorded ``failed`` ("worker process died").
A run whose trainer *raises* is not retried (it would raise again): it comes back ``failed``
with its traceback, and the next sweep retries it.

Runs are deterministic given their config, and every worker trains with the same number of
torch threads (``threads_per_run``, 1 by default), so a sweep gives the same losses on either
executor.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures as cf
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from einsearch._checks import check_int, check_non_negative_int, check_positive_int

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "RunOutcome", "get_executor",
           "EXECUTORS", "DEFAULT_MAX_RETRIES"]

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
#: retries of a run whose worker process died (not of a run whose trainer raised)
DEFAULT_MAX_RETRIES = 2
#: seconds to wait for a Ray cluster's address to accept a connection before giving up
RAY_CONNECT_TIMEOUT_S = 5.0

Progress = Callable[[Any, int, float], None]  # (config, step, batch loss)


@dataclass
class RunOutcome:
    """One finished run: ``status`` is ``"ok"`` (``payload`` is the RunResult) or ``"failed"``
    (``payload`` is the error text). ``seconds`` is the wall time of the last attempt and
    ``attempts`` how many worker processes it took (> 1 after a worker died)."""

    config: Any
    status: str
    payload: Any
    seconds: float
    attempts: int = 1


def _default_train() -> Callable:
    from .train import train

    return train


def _set_threads(threads: int) -> None:
    """Train with ``threads`` torch threads in this worker: through the OpenMP / MKL
    environment for a torch imported later (cheap: a fake trainer never imports torch), and
    directly for one already imported."""
    threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass


#: the device this worker process is pinned to (set by ``_init_worker``; None: as options say)
_WORKER_DEVICE: str | None = None


def _init_worker(threads: int = 1, parent_pid: int | None = None, devices: Any = None) -> None:
    """Worker start: torch threads, the parent watch, and (GPU runs) one device from the
    ``devices`` queue, which holds each GPU ``runs_per_gpu`` times: the worker keeps it for life."""
    global _WORKER_DEVICE
    _set_threads(threads)
    if devices is not None:
        _WORKER_DEVICE = devices.get()
    if parent_pid is not None:
        _exit_with_parent(parent_pid)


def _pinned(options: Any) -> Any:
    """``options`` with this worker's device, when it is pinned to one."""
    if _WORKER_DEVICE is None or options is None or getattr(options, "device", None) == _WORKER_DEVICE:
        return options
    return options.replace(device=_WORKER_DEVICE)


def _exit_with_parent(parent_pid: int, period_s: float = 1.0) -> None:
    """Stop this worker once the driver is gone (killed or crashed).

    A process pool's workers outlive a driver that dies without shutting the pool down (SIGTERM,
    SIGKILL) and would keep training runs nobody records. A daemon thread polls the parent pid
    and ends the process when the worker has been re-parented.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, name="einsearch-parent-watch", daemon=True).start()


def _run_one(config: Any, options: Any, train_fn: Callable | None,
             threads: int | None = None) -> tuple[str, Any, float]:
    """Worker body: ("ok", RunResult, seconds) or ("failed", traceback text, seconds)."""
    if threads is not None:
        _set_threads(threads)
    start = time.perf_counter()
    try:
        fn = train_fn or _default_train()
        return "ok", fn(config, _pinned(options)), time.perf_counter() - start
    except Exception:  # noqa: BLE001 - any trainer error becomes a recorded failure
        return "failed", traceback.format_exc(limit=20), time.perf_counter() - start


class Executor(abc.ABC):
    """Runs training configs somewhere and yields their outcomes as they finish.

    Use as a context manager (or call :meth:`close`); one executor may run many batches
    (the explore loop submits one batch per width).
    """

    name: str = "executor"
    max_retries: int = DEFAULT_MAX_RETRIES

    @property
    def concurrency(self) -> int:
        """How many runs this executor trains at once (the explore loop sizes batches by it)."""
        return 1

    @property
    def runs_per_device(self) -> int | None:
        """Runs sharing one GPU (None: CPU runs), recorded with each run's times."""
        return None

    @abc.abstractmethod
    def run(self, configs: Iterable[Any], train_fn: Callable | None = None,
            progress: Progress | None = None, options: Any | None = None) -> Iterator[RunOutcome]:
        """Train every config with ``options`` (``RunOptions``) and yield a :class:`RunOutcome`
        per config as each finishes. ``train_fn(config, options, progress=None)`` defaults to
        ``einsearch.search.train.train`` (a module-level function, so that workers can import
        it). ``progress(config, step, loss)`` is called during in-process training only."""

    def close(self) -> None:  # noqa: B027  # an optional hook: executors holding nothing need not override it
        """Release workers / the cluster connection."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> str:
        return self.name


def _check_retries(max_retries: int) -> int:
    return check_non_negative_int(max_retries, "max_retries")


class LocalExecutor(Executor):
    """This machine: in-process for ``jobs=1``, else ``jobs`` spawned worker processes with
    ``threads_per_run`` torch threads each (default 1: ``jobs`` workers fill ``jobs`` cores).

    On GPUs (``devices=["cuda:0", "cuda:1", ...]``): ``runs_per_gpu`` workers per device, each
    pinned to its device for life (a run's ``RunOptions.device`` is replaced by its worker's),
    so ``jobs = len(devices) * runs_per_gpu``.

    A worker that dies breaks the whole process pool and every run in flight with it. Those
    runs become suspects: the pool is replaced and each suspect runs alone, so a death is
    attributed to the right run; that run is retried alone up to ``max_retries`` times, and
    the innocent ones finish normally.
    """

    name = "local"

    def __init__(self, jobs: int | None = 1, *, max_retries: int = DEFAULT_MAX_RETRIES,
                 threads_per_run: int = 1, devices: Sequence[str] | None = None, runs_per_gpu: int = 1):
        check_positive_int(threads_per_run, "threads_per_run")
        check_positive_int(runs_per_gpu, "runs_per_gpu")
        self.devices = list(devices) if devices else []
        for d in self.devices:
            if not isinstance(d, str) or not d.startswith("cuda:"):
                raise ValueError(f"devices must be CUDA device texts such as 'cuda:0', got {d!r}")
        if self.devices:
            per_gpu = len(self.devices) * runs_per_gpu
            if jobs is not None and jobs != per_gpu:
                raise ValueError(f"jobs={jobs}: on GPUs the executor runs runs_per_gpu={runs_per_gpu} "
                                 f"worker(s) on each of {len(self.devices)} device(s) = {per_gpu}; "
                                 "set --runs-per-gpu instead of --jobs")
            jobs = per_gpu
        self.jobs = check_positive_int(1 if jobs is None else jobs, "jobs")
        self.runs_per_gpu = runs_per_gpu
        self.max_retries = _check_retries(max_retries)
        self.threads_per_run = threads_per_run

    @property
    def concurrency(self) -> int:
        return self.jobs

    def describe(self) -> str:
        if self.devices:
            return (f"local ({self.jobs} worker processes: {self.runs_per_gpu} on each of "
                    f"{', '.join(self.devices)})")
        return "local (in-process)" if self.jobs == 1 else f"local ({self.jobs} worker processes)"

    @property
    def runs_per_device(self) -> int | None:
        return self.runs_per_gpu if self.devices else None

    def worker_devices(self) -> list[str]:
        """The device of each worker slot (empty on the CPU)."""
        return [d for d in self.devices for _ in range(self.runs_per_gpu)]

    def run(self, configs: Iterable[Any], train_fn: Callable | None = None,
            progress: Progress | None = None, options: Any | None = None) -> Iterator[RunOutcome]:
        todo = iter(configs)  # pulled lazily: a driver may claim each run as it is submitted
        if self.jobs == 1:
            if self.devices and options is not None:
                options = options.replace(device=self.devices[0])
            return self._serial(todo, train_fn, progress, options)
        return self._parallel(todo, train_fn, options)

    @staticmethod
    def _serial(todo: Iterator[Any], train_fn: Callable | None, progress: Progress | None,
                options: Any | None) -> Iterator[RunOutcome]:
        fn = train_fn or _default_train()
        for cfg in todo:
            def report(step: int, loss: float, cfg=cfg) -> None:
                if progress is not None:
                    progress(cfg, step, loss)

            start = time.perf_counter()
            try:
                result = fn(cfg, options, progress=report)
            except Exception:  # noqa: BLE001 - recorded as a failed run
                yield RunOutcome(cfg, "failed", traceback.format_exc(limit=20),
                                 time.perf_counter() - start)
                continue
            yield RunOutcome(cfg, "ok", result, time.perf_counter() - start)

    def _parallel(self, todo: Iterator[Any], train_fn: Callable | None, options: Any | None) -> Iterator[RunOutcome]:
        jobs = self.jobs
        ctx = multiprocessing.get_context("spawn")
        pending = todo
        suspects: collections.deque = collections.deque()
        deaths: dict[int, int] = collections.Counter()  # id(config) -> deaths charged to it
        tries: dict[int, int] = collections.Counter()  # id(config) -> submissions

        def submit(cfg: Any) -> None:
            tries[id(cfg)] += 1
            in_flight[pool.submit(_run_one, cfg, options, train_fn, self.threads_per_run)] = (
                cfg, time.perf_counter())

        def new_pool() -> cf.ProcessPoolExecutor:
            devices = None
            if self.devices:  # each new pool's workers take their GPUs afresh
                devices = ctx.Queue()
                for d in self.worker_devices():
                    devices.put(d)
            return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                          initializer=_init_worker,
                                          initargs=(self.threads_per_run, os.getpid(), devices))

        pool = new_pool()
        in_flight: dict[cf.Future, tuple[Any, float]] = {}
        isolating = False
        try:
            while True:
                if not in_flight and suspects:
                    submit(suspects.popleft())
                    isolating = True
                elif not isolating:
                    while len(in_flight) < jobs:
                        cfg = next(pending, None)
                        if cfg is None:
                            break
                        submit(cfg)
                if not in_flight:
                    break
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    cfg, start = in_flight.pop(fut)
                    try:
                        status, payload, seconds = fut.result()
                    except BrokenProcessPool as err:
                        broken = True
                        if not isolating:
                            log.warning("a worker process died while training %s w=%s (or a "
                                        "run beside it); retrying the runs in flight one at a "
                                        "time", cfg.structure, getattr(cfg, "width", "?"))
                            suspects.append(cfg)
                            continue
                        deaths[id(cfg)] += 1
                        if deaths[id(cfg)] <= self.max_retries:
                            log.warning("the worker training %s w=%s died; retry %d of %d",
                                        cfg.structure, getattr(cfg, "width", "?"),
                                        deaths[id(cfg)], self.max_retries)
                            suspects.appendleft(cfg)
                            continue
                        status = "failed"
                        payload = f"worker process died ({tries[id(cfg)]} attempts): {err!r}"
                        seconds = time.perf_counter() - start
                    except Exception as err:  # noqa: BLE001 - e.g. an unpicklable result
                        status, payload = "failed", "".join(traceback.format_exception(err))
                        seconds = time.perf_counter() - start
                    yield RunOutcome(cfg, status, payload, seconds, tries[id(cfg)])
                if not in_flight:
                    isolating = False
                if broken:
                    suspects.extend(cfg for cfg, _ in in_flight.values())
                    in_flight.clear()
                    isolating = False
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------
# Ray


def _ray_task(config: Any, options: Any, train_fn: Callable | None, threads: int) -> tuple[str, Any, float]:
    return _run_one(config, options, train_fn, threads)


def _parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address ``host:port`` / ``ray://host:port``; None for ``auto``."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    if "://" in text:
        text = text.split("://", 1)[1]
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address must be 'HOST:PORT', 'ray://HOST:PORT' or 'auto', "
                         f"got {address!r}")
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Raise ValueError unless something accepts TCP connections at ``address`` within
    ``timeout`` seconds (checked before any training starts)."""
    target = _parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise ValueError(f"cannot reach a Ray cluster at address {address!r} "
                         f"(no answer on {target[0]}:{target[1]} within {timeout:g} s: {err}); "
                         "start one with `ray start --head` or omit --address to run a local "
                         "one") from None


class RayExecutor(Executor):
    """Ray remote tasks, one per run (``num_cpus_per_run`` CPUs and as many torch threads each).

    ``address``: an existing cluster (``HOST:PORT`` of its GCS, ``ray://HOST:PORT`` or
    ``auto``), checked for reachability at construction; ``None`` starts a local cluster bound
    to 127.0.0.1 with ``num_cpus`` CPUs (default: all), no dashboard, usage stats off. Ray
    retries a task whose worker died up to ``max_retries`` times; a trainer exception is not
    retried (it comes back as a ``failed`` outcome).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *,
                 max_retries: int = DEFAULT_MAX_RETRIES, num_cpus_per_run: int = 1,
                 num_gpus_per_run: float = 0.0, connect_timeout: float = RAY_CONNECT_TIMEOUT_S):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be a non-empty string or None, got {address!r}")
        if num_cpus is not None:
            check_int(num_cpus, "num_cpus", minimum=1, expected="a positive integer or None")
        check_positive_int(num_cpus_per_run, "num_cpus_per_run")
        g = num_gpus_per_run
        if isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0 or (g > 1 and g != int(g)):
            raise ValueError(f"num_gpus_per_run must be 0 (CPU runs), a fraction of one GPU in (0, 1] or a "
                             f"whole number of GPUs, got {num_gpus_per_run!r}")
        self.num_gpus_per_run = float(num_gpus_per_run)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("the ray executor needs Ray: pip install 'einsearch[ray]'") from None
        self.address = address
        self.num_cpus = num_cpus
        self.num_cpus_per_run = num_cpus_per_run
        self.max_retries = _check_retries(max_retries)
        if address is not None:
            check_ray_address(address, connect_timeout)
        self._started = False
        self._owns_init = False

    def _ensure(self) -> None:
        import ray

        if self._started:
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            self._started = True
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                      configure_logging=False, ignore_reinit_error=True)
        try:
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, _node_ip_address="127.0.0.1", **kwargs)
            else:
                ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            raise ValueError(f"cannot connect to the Ray cluster at {self.address!r}: {err}") from None
        self._started = self._owns_init = True

    def remote_options(self, user_modules: bool = False) -> dict[str, Any]:
        """The resources, retries and runtime environment each run's Ray task asks for
        (``ray.remote(...).options``): its CPUs and, for GPU runs, its share of a GPU (Ray then
        sets CUDA_VISIBLE_DEVICES, so the run's ``cuda:0`` is its own GPU); with ``user_modules``
        (a run's task is an import path) PYTHONPATH = the driver's import path, so the task module
        the driver imports is importable in the worker (on a remote cluster the same folders must
        exist there, or the module be installed)."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus_per_run, "max_retries": self.max_retries,
                                "retry_exceptions": False}
        if user_modules:
            # the driver's importable modules (a task named by its import path, found through
            # PYTHONPATH or sys.path) reach the workers through the task's runtime environment
            paths = [p for p in sys.path if p and os.path.isdir(p)]
            opts["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
        if self.num_gpus_per_run > 0:
            opts["num_gpus"] = self.num_gpus_per_run
        return opts

    @property
    def runs_per_device(self) -> int | None:
        return max(1, round(1 / self.num_gpus_per_run)) if self.num_gpus_per_run > 0 else None

    def check_resources(self) -> None:
        """Raise ValueError when GPU runs are asked of a cluster without GPUs (before any run)."""
        self._ensure()
        import ray

        if self.num_gpus_per_run > 0 and ray.cluster_resources().get("GPU", 0) < min(1.0, self.num_gpus_per_run):
            raise ValueError(f"--device cuda on Ray: the cluster at {self.address or 'localhost'} has no GPU "
                             f"(resources {ray.cluster_resources()})")

    @property
    def concurrency(self) -> int:
        self._ensure()
        import ray

        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1)) // self.num_cpus_per_run
        if self.num_gpus_per_run > 0:
            slots = min(slots, int(resources.get("GPU", 0) / self.num_gpus_per_run))
        return max(1, slots)

    def describe(self) -> str:
        where = self.address or "a local cluster on 127.0.0.1"
        return f"ray ({where})"

    def run(self, configs: Iterable[Any], train_fn: Callable | None = None,
            progress: Progress | None = None, options: Any | None = None) -> Iterator[RunOutcome]:
        todo = list(configs)
        if not todo:
            return iter(())
        self._ensure()
        return self._run(todo, train_fn, options)

    def _run(self, todo: list, train_fn: Callable | None, options: Any | None) -> Iterator[RunOutcome]:
        import ray
        from ray.exceptions import RayError

        from .tasks import is_import_path

        user_modules = any(is_import_path(getattr(c, "task", None)) for c in todo)
        task = ray.remote(_ray_task).options(**self.remote_options(user_modules))
        fn_ref = ray.put(train_fn)
        refs = {task.remote(cfg, options, fn_ref, self.num_cpus_per_run): (cfg, time.perf_counter())
                for cfg in todo}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    cfg, start = refs.pop(ref)
                    try:
                        status, payload, seconds = ray.get(ref)
                    except RayError as err:  # worker died more than max_retries times, ...
                        status = "failed"
                        payload = (f"worker process died (Ray, {self.max_retries + 1} attempts): "
                                   f"{type(err).__name__}: {err}")
                        seconds = time.perf_counter() - start
                    yield RunOutcome(cfg, status, payload, seconds)
        finally:
            for ref in refs:  # abandoned (the driver stopped): do not leave them running
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def close(self) -> None:
        if self._owns_init:
            import ray

            ray.shutdown()
            self._owns_init = self._started = False


def get_executor(name: str = "local", jobs: int | None = 1, address: str | None = None, *,
                 max_retries: int = DEFAULT_MAX_RETRIES, devices: Sequence[str] | None = None,
                 runs_per_gpu: int = 1) -> Executor:
    """``"local"`` -> :class:`LocalExecutor` (``jobs`` processes, or ``runs_per_gpu`` per device
    of ``devices``); ``"ray"`` -> :class:`RayExecutor` on ``address`` (None: a local cluster with
    ``jobs`` CPUs when ``jobs > 1``, else all CPUs), each run asking for 1 / ``runs_per_gpu`` of a
    GPU when ``devices`` are GPUs. Bad names, an ``address`` for the local executor and an
    unreachable Ray address raise ValueError here, before anything runs."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
    check_positive_int(runs_per_gpu, "runs_per_gpu")
    if name == "local":
        if address is not None:
            raise ValueError(f"--address {address!r} is for the ray executor; "
                             "add --executor ray or drop --address")
        return LocalExecutor(jobs, max_retries=max_retries, devices=devices, runs_per_gpu=runs_per_gpu)
    jobs = 1 if jobs is None else check_positive_int(jobs, "jobs")
    return RayExecutor(address, num_cpus=jobs if address is None and jobs > 1 else None,
                       max_retries=max_retries, num_gpus_per_run=1.0 / runs_per_gpu if devices else 0.0)
