"""Where studies run: in this process, a local process pool, or a Dask distributed cluster.

All three offer the same small interface to the coordinator:

``slots``                 how many studies may run at once (the coordinator keeps that many in flight)
``submit(fn, task)``      start ``fn(task)``; returns a future
``wait(futures, t)``      the futures that finished within ``t`` seconds (at least one, or none on timeout)
``result(future)``        the task's return value, or raises :class:`WorkerLost` when the process
                          running it died (segfault, OOM kill) — the only failure not reported
                          by :func:`pipeline.batch.run_case.execute` itself
``close(cancel)``         release workers

Process pool: ``spawn`` start method (the coordinator has threads: progress bar, PACS
listener; forking a threaded process can deadlock). When a worker dies the pool is broken
for every study in flight; :meth:`ProcessExecutor.restart` starts a fresh pool and the
coordinator re-runs those studies one at a time, so only the study that kills its worker
twice is failed (see :mod:`pipeline.batch.runner`).

Dask: ``scheduler="local"`` starts a ``LocalCluster`` (``workers`` processes, one thread
each: studies are CPU-bound and keep their own thread pools); ``tcp://host:port`` connects to
an existing scheduler. Workers must have surgitwin installed and see the same filesystem
paths as the coordinator (inputs and ``DIR``). Dask retries a task whose worker died on
another worker up to ``distributed.scheduler.allowed-failures`` times, then reports
``KilledWorker``, which becomes :class:`WorkerLost`.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import time
from typing import Any, Callable, Iterable

from ..errors import SurgitwinError

log = logging.getLogger(__name__)


class WorkerLost(SurgitwinError):
    """The process running a study died before returning a result."""


class InlineExecutor:
    """Runs each study synchronously in this process (``--workers 0``; debugging, profiling)."""

    name = "inline"

    def __init__(self):
        self.slots = 1

    def submit(self, fn: Callable, task: Any) -> cf.Future:
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(task))
        except BaseException as e:  # noqa: BLE001 - surfaced by result()
            f.set_exception(e)
        return f

    def wait(self, futures: Iterable, timeout: float) -> set:
        return {f for f in futures if f.done()}

    def result(self, fut) -> Any:
        return fut.result()

    def restart(self) -> None:
        pass

    def close(self, cancel: bool = False) -> None:
        pass

    def describe(self) -> str:
        return "in-process"


class ProcessExecutor:
    """A ``concurrent.futures.ProcessPoolExecutor`` of ``workers`` spawned processes."""

    name = "processes"

    def __init__(self, workers: int):
        if workers < 1:
            raise SurgitwinError(f"--workers must be >= 1 for a process pool; found {workers}")
        self.slots = int(workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._pool = self._new()

    def _new(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.slots, mp_context=self._ctx, initializer=_worker_init,
                                      initargs=(os.getpid(),))

    def submit(self, fn: Callable, task: Any) -> cf.Future:
        try:
            return self._pool.submit(fn, task)
        except cf.process.BrokenProcessPool as e:  # a worker died since the last look: nothing was started
            raise WorkerLost(f"the process pool broke before this study started ({e})") from None

    def wait(self, futures: Iterable, timeout: float) -> set:
        done, _ = cf.wait(list(futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done

    def result(self, fut) -> Any:
        try:
            return fut.result()
        except cf.process.BrokenProcessPool as e:
            raise WorkerLost(f"worker process died while processing this study ({e})") from None

    def restart(self) -> None:
        """Replace a broken pool (its processes are gone or being torn down)."""
        try:
            self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - a broken pool may complain while shutting down
            pass
        self._pool = self._new()

    def close(self, cancel: bool = False) -> None:
        if cancel:
            # Stop running studies now (Ctrl-C / SIGTERM): the coordinator marks their rows
            # 'interrupted' and --resume re-runs them; nothing half-written is ever published.
            procs = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
        else:
            self._pool.shutdown(wait=True)

    def describe(self) -> str:
        return f"process pool, {self.slots} workers"


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> str:
    """Make this process end when ``parent_pid`` (the coordinator) dies, even by kill -9.

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL), then a check that the parent did not die before
    the call. Elsewhere: a daemon thread that polls the parent pid. Returns which one is used.
    An orphaned worker would otherwise go on and publish results a resumed batch may already
    have replaced (publication also checks the run epoch: :func:`pipeline.batch.run_case.publish`).
    """
    import signal
    import sys

    how = "watchdog"
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                how = "pdeathsig"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the coordinator died before we got here
        os._exit(1)
    if how == "watchdog":
        import threading

        def watch():
            while True:
                time.sleep(1.0)
                if os.getppid() != parent_pid:
                    os._exit(1)
        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    return how


def _worker_init(parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    # Studies run one per process: keep each process's BLAS/torch/VTK threads to one so N
    # workers use N cores instead of N x cores threads fighting over them.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import signal

        # Ctrl-C goes to the whole process group; the coordinator decides what happens.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass


class DaskExecutor:
    """Studies as tasks on a Dask distributed cluster (``local`` or ``tcp://host:port``)."""

    name = "dask"

    def __init__(self, scheduler: str, workers: int | None = None, *, connect_timeout: float = 30.0):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SurgitwinError("--scheduler needs Dask distributed: pip install 'dask[distributed]'") from None
        self.cluster = None
        self.scheduler = scheduler
        if scheduler == "local":
            self.cluster = LocalCluster(n_workers=max(1, workers or 2), threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR,
                                        host="127.0.0.1")
            self.client = Client(self.cluster, set_as_default=False)
        else:
            if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
                raise SurgitwinError(f"--scheduler must be 'local' or an address like tcp://HOST:PORT; found {scheduler!r}")
            try:
                self.client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise SurgitwinError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        nthreads = self.client.nthreads()
        if not nthreads:
            self.client.wait_for_workers(1, timeout=connect_timeout)
            nthreads = self.client.nthreads()
        self.slots = max(1, sum(nthreads.values()))

    def submit(self, fn: Callable, task: Any):
        # pure=False: two runs of one study are two computations; key names the study in the dashboard.
        import uuid

        return self.client.submit(fn, task, pure=False, key=f"surgitwin-{task.get('key', 'study')}-{uuid.uuid4().hex[:8]}")

    def wait(self, futures: Iterable, timeout: float) -> set:
        # distributed.wait() needs a default client (we never install one, so two batches in
        # one process cannot pick up each other's client); poll the futures' state instead.
        futures = list(futures)
        deadline = time.monotonic() + timeout
        while True:
            done = {f for f in futures if f.done()}
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.02)

    def result(self, fut) -> Any:
        from distributed import KilledWorker

        try:
            return fut.result()
        except KilledWorker as e:
            raise WorkerLost(f"Dask workers died while processing this study ({e})") from None

    def restart(self) -> None:
        pass

    def close(self, cancel: bool = False) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def describe(self) -> str:
        where = "LocalCluster" if self.cluster is not None else self.scheduler
        return f"Dask ({where}), {self.slots} worker threads"


def make_executor(workers: int = 1, scheduler: str | None = None):
    """``scheduler`` wins when given; ``workers == 0`` runs in this process."""
    if scheduler:
        return DaskExecutor(scheduler, workers or None)
    if workers == 0:
        return InlineExecutor()
    return ProcessExecutor(workers)
