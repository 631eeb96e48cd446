"""Results store: one SQLite file per sweep (``out_dir/results.sqlite``).

Three tables hold everything the analysis needs:

* ``runs``    one row per training run (run_id is ``TrainConfig.run_id()``): what was trained
  (task, structure, theta and its taxonomy, width, seed, lr, precision, the full config as
  JSON), where and how (device, the execution options and environment as JSON), what it cost
  (params, FLOPs per token, wall time) and how it ended (status, final eval loss, error).
* ``points``  one row per logged step of a run: (step, tokens, compute, train_loss, eval_loss,
  elapsed_s = training seconds since the run's first step).
* ``metrics`` extra named values per logged step (e.g. an MoE layer's expert load):
  (run_id, step, name, value).

Schema versions. Version 1 (the first release) had no device, precision, execution, elapsed_s
or metrics; opening a version-1 store migrates it in place, in one transaction, by adding them
(empty for the old rows: precision fp32, device and times unknown). Run ids do not change
(``einsearch.search.config``), so a migrated store resumes with nothing retrained.

Crash safety. A run and all of its points are written in ONE transaction, in WAL mode, so a
process killed at any instant leaves either the whole finished run or nothing of it; a sweep that
restarts asks :meth:`ResultStore.finished_run_ids` which runs to skip. Re-recording a run
replaces it (its old points are deleted in the same transaction), so nothing is ever duplicated.

Statuses: ``finished`` and ``diverged`` are final (a diverged run is a result, not an accident,
and is never retried); ``failed`` (the trainer raised) is recorded with its error and retried by
the next sweep.

Drivers. Only drivers write (a sweep's parent process; never its workers). Several drivers may
share one store: each claims a run before training it (``claim``, the ``claims`` table, a
heartbeat per driver) and skips runs another live driver holds, so no run is trained twice; a
claim of a driver that died (process gone on this host, or heartbeat older than the TTL) is
taken over. Readers may open the file at any time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._io import finite_or_none, utc_now_iso

__all__ = ["ResultStore", "RunRow", "PointRow", "StoreError", "SCHEMA_VERSION", "FINAL_STATUSES", "driver_id",
           "driver_alive"]

SCHEMA_VERSION = 2
APPLICATION = "einsearch"
#: statuses a sweep never retries
FINAL_STATUSES = ("finished", "diverged")
STATUSES = ("finished", "diverged", "failed")

_METRICS_TABLE = """
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step   INTEGER NOT NULL,
    name   TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, step, name)
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS einsearch_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    task            TEXT NOT NULL,
    structure       TEXT NOT NULL,
    theta           TEXT,
    omega           REAL,
    psi             REAL,
    nu              REAL,
    width           INTEGER,
    seed            INTEGER,
    lr              REAL,
    params          INTEGER,
    flops_per_token REAL,
    status          TEXT NOT NULL,
    wall_time_s     REAL,
    final_eval_loss REAL,
    config_json     TEXT NOT NULL,
    finished_at     TEXT NOT NULL,
    error           TEXT,
    device          TEXT,
    precision       TEXT,
    execution_json  TEXT
);
CREATE TABLE IF NOT EXISTS points (
    run_id     TEXT NOT NULL,
    step       INTEGER NOT NULL,
    tokens     INTEGER NOT NULL,
    compute    REAL NOT NULL,
    train_loss REAL,
    eval_loss  REAL,
    elapsed_s  REAL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX IF NOT EXISTS runs_by_structure ON runs (task, structure);
""" + _METRICS_TABLE

#: version 1 -> 2, in one transaction: the columns and the table version 2 added
_MIGRATE_1_TO_2 = ("ALTER TABLE runs ADD COLUMN device TEXT",
                   "ALTER TABLE runs ADD COLUMN precision TEXT",
                   "ALTER TABLE runs ADD COLUMN execution_json TEXT",
                   "ALTER TABLE points ADD COLUMN elapsed_s REAL", _METRICS_TABLE,
                   "UPDATE einsearch_meta SET value = '2' WHERE key = 'schema_version'")

#: which driver is training which run (coordination between drivers on one folder, not results)
_CLAIMS_TABLE = """
CREATE TABLE IF NOT EXISTS claims (
    run_id    TEXT PRIMARY KEY,
    driver    TEXT NOT NULL,
    heartbeat REAL NOT NULL
)
"""


def driver_id() -> str:
    """This process as a claim's driver: ``host:pid:nonce`` (the nonce tells two drivers of one
    pid apart, e.g. after a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def driver_alive(driver: str) -> bool:
    """False only when ``driver`` ran on this host and its process is gone."""
    host, _, rest = driver.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreError(ValueError):
    """The file is not an einsearch results store (or one of an unsupported version)."""


@dataclass(frozen=True)
class RunRow:
    """One row of ``runs``; ``config`` is the decoded ``config_json``."""

    run_id: str
    task: str
    structure: str
    theta: str | None
    omega: float | None
    psi: float | None
    nu: float | None
    width: int | None
    seed: int | None
    lr: float | None
    params: int | None
    flops_per_token: float | None
    status: str
    wall_time_s: float | None
    final_eval_loss: float | None
    config: dict[str, Any]
    finished_at: str
    error: str | None = None
    device: str | None = None
    precision: str | None = None
    execution: dict[str, Any] | None = None

    @property
    def run_precision(self) -> str:
        """The run's precision (``fp32`` for runs recorded before precision existed)."""
        return self.precision or str(self.config.get("precision", "fp32"))


@dataclass(frozen=True)
class PointRow:
    """One logged step of a run. ``compute`` is cumulative training FLOPs; ``elapsed_s`` the
    training seconds since the run's first step (None in stores older than schema 2)."""

    step: int
    tokens: int
    compute: float
    train_loss: float | None
    eval_loss: float | None
    elapsed_s: float | None = None


#: JSON columns and the RunRow field each decodes into
_JSON_COLUMNS = {"config_json": "config", "execution_json": "execution"}
_RUN_COLUMNS = [{v: k for k, v in _JSON_COLUMNS.items()}.get(f.name, f.name) for f in dataclasses.fields(RunRow)]
_POINT_COLUMNS = "step, tokens, compute, train_loss, eval_loss, elapsed_s"


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    return dict(vars(config))


def structure_meta(structure: str) -> dict[str, Any]:
    """theta text and taxonomy (omega, psi, nu) of a structure name or theta text.

    Structures that are not single points of the space (the MoE kinds ``"moe"``,
    ``"btt_moe"``) have no theta or taxonomy: recorded as unknown (NULL).
    """
    from einsearch import parse_structure

    config = parse_structure(structure)
    tax = config.taxonomy()
    if config.theta is None or tax is None:
        return {"theta": None, "omega": None, "psi": None, "nu": None}
    return {"theta": str(config.theta), "omega": tax.omega, "psi": tax.psi, "nu": tax.nu}


class ResultStore:
    """SQLite store of runs and their loss curves. See the module docstring.

    ``ResultStore(path)`` creates the file (and its parent folder) if needed, and raises
    :class:`StoreError` if ``path`` exists but is not an einsearch store.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        except sqlite3.Error as err:  # pragma: no cover - e.g. a directory
            raise StoreError(f"{self.path}: cannot open as a results store: {err}") from None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if existed:
                self._check_existing()
            else:
                self._create()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise StoreError(
                f"{self.path} is not an einsearch results store (SQLite said: {err})") from None
        except Exception:
            self._conn.close()
            raise

    # -- schema -----------------------------------------------------------------------------
    def _create(self) -> None:
        meta = [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION)),
                ("created_at", utc_now_iso())]
        inserts = "".join(
            f"INSERT OR IGNORE INTO einsearch_meta (key, value) VALUES ('{k}', '{v}');"
            for k, v in meta)
        # one script, one transaction: a kill here leaves either no schema or all of it
        self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + _CLAIMS_TABLE + ";" + inserts + "COMMIT;")

    def _check_existing(self) -> None:
        tables = {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:  # an empty SQLite file: adopt it
            self._create()
            return
        if "einsearch_meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database but not an einsearch results store "
                f"(tables: {sorted(tables)}); choose another --out folder")
        meta = dict(self._conn.execute("SELECT key, value FROM einsearch_meta"))
        if meta.get("application") != APPLICATION:
            raise StoreError(f"{self.path} is not an einsearch results store")
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version}, newer than this einsearch "
                f"supports ({SCHEMA_VERSION}); upgrade einsearch")
        if version == 1:
            self._migrate_1_to_2()
        elif version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has an unknown store schema version {version}")
        self._conn.execute(_CLAIMS_TABLE)

    def _migrate_1_to_2(self) -> None:
        """Add what schema 2 has, once, in one transaction (another process may be migrating the
        same file: the version is read again under the write lock)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM einsearch_meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) == 1:
                for statement in _MIGRATE_1_TO_2:
                    conn.execute(statement)

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def _transaction(self) -> "ResultStore._Tx":
        return ResultStore._Tx(self._conn)

    @property
    def schema_version(self) -> int:
        row = self._conn.execute(
            "SELECT value FROM einsearch_meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    # -- writing ----------------------------------------------------------------------------
    def record(self, result: Any, meta: Mapping[str, Any] | None = None, *,
               execution: Mapping[str, Any] | None = None) -> None:
        """Write one ``RunResult`` and all its points atomically (replacing any earlier copy).

        ``meta`` carries what the result does not know: ``theta``, ``omega``, ``psi``, ``nu``
        (computed from ``result.config.structure`` when omitted) and optionally ``error``;
        ``execution`` how it ran (device, threads, jobs, torch version, ...). A point's
        ``metrics`` mapping, if it has one, goes to the ``metrics`` table.
        """
        config = result.config
        meta = dict(meta) if meta is not None else structure_meta(config.structure)
        status = str(result.status)
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {STATUSES}")
        points = [
            (int(p.step), int(p.tokens), float(p.compute),
             finite_or_none(p.train_loss), finite_or_none(p.eval_loss),
             finite_or_none(getattr(p, "elapsed_s", None)))
            for p in result.points
        ]
        metrics = [(int(p.step), str(name), finite_or_none(value))
                   for p in result.points for name, value in (getattr(p, "metrics", None) or {}).items()]
        self._write(config, meta, status=status, params=result.params,
                    flops_per_token=result.flops_per_token, wall_time_s=result.wall_time_s,
                    final_eval_loss=result.final_eval_loss, error=meta.get("error"),
                    points=points, metrics=metrics, device=getattr(result, "device", None),
                    execution=execution)

    def record_failure(self, config: Any, error: str, meta: Mapping[str, Any] | None = None,
                       wall_time_s: float | None = None, *,
                       execution: Mapping[str, Any] | None = None) -> None:
        """Record that training ``config`` raised ``error`` (status ``failed``, no points).

        Failed runs are not in :meth:`finished_run_ids`, so the next sweep retries them.
        """
        if meta is None:
            try:
                meta = structure_meta(config.structure)
            except Exception:  # the structure itself may be what failed
                meta = {}
        self._write(config, meta, status="failed", params=None, flops_per_token=None,
                    wall_time_s=wall_time_s, final_eval_loss=None, error=str(error), points=[],
                    metrics=[], device=None, execution=execution)

    def _write(self, config: Any, meta: Mapping[str, Any], *, status: str, params: Any,
               flops_per_token: Any, wall_time_s: Any, final_eval_loss: Any, error: Any,
               points: list[tuple], metrics: list[tuple], device: str | None,
               execution: Mapping[str, Any] | None) -> None:
        run_id = config.run_id()
        cfg = _config_dict(config)
        row = {
            "run_id": run_id,
            "task": cfg.get("task"),
            "structure": cfg.get("structure"),
            "theta": meta.get("theta"),
            "omega": finite_or_none(meta.get("omega")),
            "psi": finite_or_none(meta.get("psi")),
            "nu": finite_or_none(meta.get("nu")),
            "width": cfg.get("width"),
            "seed": cfg.get("seed"),
            "lr": cfg.get("lr"),
            "params": None if params is None else int(params),
            "flops_per_token": finite_or_none(flops_per_token),
            "status": status,
            "wall_time_s": finite_or_none(wall_time_s),
            "final_eval_loss": finite_or_none(final_eval_loss),
            "config_json": json.dumps(cfg, sort_keys=True, default=str),
            "finished_at": utc_now_iso(),
            "error": error,
            "device": device,
            "precision": cfg.get("precision", "fp32"),
            "execution_json": None if execution is None else json.dumps(dict(execution), sort_keys=True,
                                                                         default=str),
        }
        cols = ", ".join(_RUN_COLUMNS)
        marks = ", ".join("?" for _ in _RUN_COLUMNS)
        with self._transaction() as conn:
            conn.execute("DELETE FROM points WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM claims WHERE run_id = ?", (run_id,))
            conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                         [row[c] for c in _RUN_COLUMNS])
            conn.executemany(
                f"INSERT OR REPLACE INTO points (run_id, {_POINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, *p) for p in points])
            conn.executemany("INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                             [(run_id, *m) for m in metrics])

    # -- claims: several drivers on one store ------------------------------------------------
    def claim(self, run_id: str, driver: str, ttl_s: float) -> bool:
        """Take run ``run_id`` for ``driver`` unless it is final or another driver holds it: a
        claim whose heartbeat is older than ``ttl_s`` seconds, or whose driver process is gone
        (same host), is taken over. True when ``driver`` holds it afterwards."""
        now = time.time()
        with self._transaction() as conn:
            marks = ", ".join("?" for _ in FINAL_STATUSES)
            if conn.execute(f"SELECT 1 FROM runs WHERE run_id = ? AND status IN ({marks})",
                            (run_id, *FINAL_STATUSES)).fetchone():
                return False
            row = conn.execute("SELECT driver, heartbeat FROM claims WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and row[0] != driver and now - row[1] <= ttl_s and driver_alive(row[0]):
                return False
            conn.execute("INSERT OR REPLACE INTO claims (run_id, driver, heartbeat) VALUES (?, ?, ?)",
                         (run_id, driver, now))
            return True

    def heartbeat(self, driver: str) -> None:
        """Keep ``driver``'s claims alive."""
        with self._transaction() as conn:
            conn.execute("UPDATE claims SET heartbeat = ? WHERE driver = ?", (time.time(), driver))

    def release(self, driver: str, run_id: str | None = None) -> None:
        """Drop ``driver``'s claim on ``run_id`` (None: all of its claims)."""
        with self._transaction() as conn:
            if run_id is None:
                conn.execute("DELETE FROM claims WHERE driver = ?", (driver,))
            else:
                conn.execute("DELETE FROM claims WHERE driver = ? AND run_id = ?", (driver, run_id))

    def claims(self) -> dict[str, str]:
        """Current claims: ``{run_id: driver}``."""
        return dict(self._conn.execute("SELECT run_id, driver FROM claims"))

    # -- reading ----------------------------------------------------------------------------
    def finished_run_ids(self) -> set[str]:
        """run_ids a sweep must not run again: status ``finished`` or ``diverged``."""
        marks = ", ".join("?" for _ in FINAL_STATUSES)
        return {r[0] for r in self._conn.execute(
            f"SELECT run_id FROM runs WHERE status IN ({marks})", FINAL_STATUSES)}

    def runs(self, *, task: str | None = None, structure: str | None = None,
             status: str | Iterable[str] | None = None, run_ids: Iterable[str] | None = None) -> list[RunRow]:
        """Runs, optionally filtered (``run_ids``: only these), ordered by structure, width, seed, lr."""
        where, args = [], []
        if task is not None:
            where.append("task = ?")
            args.append(task)
        if structure is not None:
            where.append("structure = ?")
            args.append(structure)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(statuses)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY structure, width, seed, lr, run_id"
        rows = [self._row(values) for values in self._conn.execute(sql, args)]
        if run_ids is not None:
            keep = set(run_ids)
            rows = [r for r in rows if r.run_id in keep]
        return rows

    def run(self, run_id: str) -> RunRow | None:
        """One run by id, or None."""
        values = self._conn.execute(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if values is None else self._row(values)

    @staticmethod
    def _row(values: Sequence[Any]) -> RunRow:
        d = dict(zip(_RUN_COLUMNS, values))
        for column, name in _JSON_COLUMNS.items():
            text = d.pop(column)
            d[name] = None if text is None else json.loads(text)
        return RunRow(**d)

    def points(self, run_id: str) -> list[PointRow]:
        """The logged points of one run, by step."""
        return [PointRow(*r) for r in self._conn.execute(
            f"SELECT {_POINT_COLUMNS} FROM points WHERE run_id = ? ORDER BY step", (run_id,))]

    def all_points(self) -> dict[str, list[PointRow]]:
        """Every run's points in one query: ``{run_id: [PointRow, ...]}`` (by step)."""
        out: dict[str, list[PointRow]] = {}
        for run_id, *rest in self._conn.execute(
                f"SELECT run_id, {_POINT_COLUMNS} FROM points ORDER BY run_id, step"):
            out.setdefault(run_id, []).append(PointRow(*rest))
        return out

    def metrics(self, run_id: str | None = None) -> dict[str, dict[int, dict[str, float | None]]]:
        """Extra per-point values: ``{run_id: {step: {name: value}}}`` (one run, or all)."""
        sql, args = "SELECT run_id, step, name, value FROM metrics", []
        if run_id is not None:
            sql, args = sql + " WHERE run_id = ?", [run_id]
        out: dict[str, dict[int, dict[str, float | None]]] = {}
        for rid, step, name, value in self._conn.execute(sql + " ORDER BY run_id, step, name", args):
            out.setdefault(rid, {}).setdefault(int(step), {})[name] = value
        return out

    def load(self, **filters: Any) -> list[tuple[RunRow, list[PointRow]]]:
        """Runs (filtered as in :meth:`runs`) paired with their points."""
        pts = self.all_points()
        return [(r, pts.get(r.run_id, [])) for r in self.runs(**filters)]

    def tasks(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT task FROM runs ORDER BY task")]

    def resolve_task(self, task: str | None = None) -> str:
        """``task`` if the store has runs of it; with None, the store's only task.

        Raises ValueError when the store is empty, holds several tasks and none was chosen, or
        has no runs of ``task``.
        """
        tasks = self.tasks()
        if not tasks:
            raise ValueError(f"{self.path} holds no runs yet; run a sweep first")
        if task is None:
            if len(tasks) > 1:
                raise ValueError(f"{self.path} holds several tasks {tasks}; choose one with task=")
            return tasks[0]
        if task not in tasks:
            raise ValueError(f"{self.path} has no runs of task {task!r}; it has {tasks}")
        return task

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"
