"""Where a protocol's cells run: this process, worker processes, or SLURM jobs via submitit.

Every launcher runs :func:`bnnkit.engine.protocol.cells.run_cell` on independent cells, so they give
the same table; each calls ``done(cell, info)`` in this process as a cell finishes.

- ``local`` (default): one cell after another here, or ``jobs`` worker processes (spawned; each
  gets ``cpu_count / jobs`` torch threads).
- ``slurm``: one SLURM job per cell through submitit's ``AutoExecutor`` (an array job; partition,
  GPUs per job, time limit and memory from the ``slurm`` options; ``jobs`` caps how many run at
  once). Logs and pickles go to ``OUT/jobs/``.

For tests only: with ``BNNKIT_SUBMITIT_CLUSTER=local`` in the environment, ``slurm`` submits the
same way to submitit's ``LocalExecutor`` instead (each cell a separate local process, no SLURM).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bnnkit.engine.protocol.cells import Cell, run_cell
from bnnkit.errors import UsageError

LAUNCHERS = ("local", "slurm")
#: tests: BNNKIT_SUBMITIT_CLUSTER=local makes --launcher slurm use submitit's LocalExecutor
CLUSTER_ENV = "BNNKIT_SUBMITIT_CLUSTER"
Done = Callable[[Cell, dict[str, Any]], None]


def launch(
    cells: Sequence[Cell],
    done: Done,
    *,
    launcher: str = "local",
    jobs: int = 1,
    folder: Path,
    slurm: dict[str, Any] | None = None,
) -> None:
    """Run ``cells`` with ``launcher``; the first failure is raised once the others finished."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    if not cells:
        return
    if launcher == "local" and jobs == 1:
        for cell in cells:
            done(cell, run_cell(cell))
    elif launcher == "local":
        _processes(cells, done, jobs)
    else:
        _submitit(cells, done, jobs, Path(folder), slurm or {})


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _processes(cells: Sequence[Cell], done: Done, jobs: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(jobs, len(cells))
    threads = max(1, (os.cpu_count() or 1) // workers)
    errors: list[BaseException] = []
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(threads,),
    ) as pool:  # fmt: skip
        futures = {pool.submit(run_cell, cell): cell for cell in cells}
        try:
            for future in as_completed(futures):
                try:
                    done(futures[future], future.result())
                except Exception as exc:  # noqa: BLE001 - the others go on; raised below
                    errors.append(exc)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise
    if errors:
        raise errors[0]


def slurm_parameters(options: dict[str, Any], jobs: int) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords from ``--partition/--gpus/--time/--mem``."""
    params: dict[str, Any] = {
        "name": "bnnkit-protocol",
        "timeout_min": int(options.get("time") or 240),
        "gpus_per_node": int(options.get("gpus") or 0),
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if options.get("cpus"):
        params["cpus_per_task"] = int(options["cpus"])
    if options.get("mem"):
        params["mem_gb"] = float(options["mem"])
    if options.get("partition"):
        params["slurm_partition"] = str(options["partition"])
    if jobs > 1:
        params["slurm_array_parallelism"] = jobs
    return params


def _submitit(
    cells: Sequence[Cell],
    done: Done,
    jobs: int,
    folder: Path,
    options: dict[str, Any],
) -> None:
    import submitit

    cluster = "local" if os.environ.get(CLUSTER_ENV) == "local" else "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UsageError(
            "--launcher slurm: no `sbatch` on this machine",
            hint="run on a SLURM login node, or use --launcher local [--jobs N]",
        )
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = slurm_parameters(options, jobs)
    if cluster == "local":  # the local executor takes the generic keys only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    submitted = executor.map_array(run_cell, list(cells))
    by_id = {job.job_id: cell for job, cell in zip(submitted, cells, strict=True)}
    errors: list[BaseException] = []
    try:
        poll = 0.5 if cluster == "local" else 15.0  # seconds between status checks (sacct)
        for job in submitit.helpers.as_completed(submitted, poll_frequency=poll):
            try:
                done(by_id[job.job_id], job.result())
            except Exception as exc:  # noqa: BLE001 - the others go on; raised below
                errors.append(exc)
    except KeyboardInterrupt:
        for job in submitted:
            job.cancel(check=False)
        raise
    if errors:
        raise errors[0]
