"""Running many planned commands: on this machine or on a SLURM cluster, through submitit.

Every planned run is an ordinary command line (``python -m lance finetune ...``), so any
scheduler can run the plan; :func:`run_commands` is the project's own way:

* ``executor="local"``: submitit's local executor, each command in its own process, at most
  ``jobs`` at a time, the machine's threads divided between them;
* ``executor="slurm"``: one SLURM job array (partition, time limit, GPUs per task and array
  parallelism as options). The result files land where the commands write them, relative to
  the directory the plan was started from, which must then be on a filesystem every node sees.

Each command's outcome comes back with its log files; a failed one is reported with the tail
of its log and does not stop the others. A command that exits 2 refused its input.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from lance.errors import LanceError

__all__ = ["Outcome", "run_commands", "lance_argv", "EXECUTORS"]

EXECUTORS = ("local", "slurm")


@dataclass
class Outcome:
    command: str
    status: str  # "done" | "failed"
    job_id: str
    stdout: str  # log paths
    stderr: str
    tail: str = ""  # the end of the log of a failed command


def lance_argv(command: str) -> list[str]:
    """``python -m lance X ...`` -> ``["X", ...]``; anything else is refused."""
    argv = shlex.split(command)
    if argv[:3] != ["python", "-m", "lance"] or len(argv) < 4:
        raise LanceError(f"a planned command must start with 'python -m lance COMMAND': {command!r}")
    return argv[3:]


def _run_one(argv: list[str], threads: int) -> int:
    """The job: one command of the plan, ``python -m lance ...`` in a process of its own (its output
    goes to the job's log). A non-zero exit fails the job."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"$ python -m lance {shlex.join(argv)}", flush=True)
    status = subprocess.call([sys.executable, "-m", "lance", *argv], env=env)
    if status:
        raise RuntimeError(f"python -m lance {shlex.join(argv)} exited with status {status}")
    return status


def _executor(kind: str, folder: Path, jobs: int, threads: int, *, partition: Optional[str],
              time_min: int, gpus: int):
    import submitit

    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=time_min)
        return ex
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = dict(timeout_min=time_min, slurm_array_parallelism=jobs, cpus_per_task=max(threads, 1),
                  name="lance-plan")
    if partition:
        params["slurm_partition"] = partition
    if gpus:
        params["gpus_per_node"] = gpus
    ex.update_parameters(**params)
    return ex


def _submit_array(ex, argvs: list, threads: int) -> list:
    """One SLURM array of the commands; if sbatch refuses it (no controller, a bad partition),
    one line with sbatch's own last word, before anything has run."""
    from submitit.core.utils import FailedJobError

    try:
        return ex.map_array(_run_one, argvs, [threads] * len(argvs))
    except (FailedJobError, OSError) as err:
        said = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise LanceError(f"sbatch could not submit the plan ({said[-1] if said else type(err).__name__}); check that "
                         "a SLURM controller answers (`sinfo`), or run with --executor local.") from None


def _tail(path: str, lines: int = 12) -> str:
    """What a failed command said: its one-line ``error:`` messages when it refused its input,
    else the last lines of its log."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text if line.startswith("error:")]
    return "\n".join(errors or text[-lines:])


def _outcome(command: str, job) -> Outcome:
    try:
        job.result()
        status = "done"
    except Exception:  # the job's own exception, or the scheduler's: either way, this command failed
        status = "failed"
    paths = job.paths
    out = Outcome(command, status, str(job.job_id), str(paths.stdout), str(paths.stderr))
    if status == "failed":
        out.tail = _tail(out.stderr) or _tail(out.stdout)
    return out


def run_commands(commands: Sequence[str], *, executor: str = "local", jobs: int = 1,
                 folder: str | os.PathLike = "_build/jobs", partition: Optional[str] = None,
                 time_min: int = 24 * 60, gpus: int = 0, threads: Optional[int] = None,
                 poll_s: float = 2.0, log: Callable = print) -> list[Outcome]:
    """Run ``commands`` (each ``python -m lance ...``) through submitit and wait for all of them;
    returns one :class:`Outcome` per command, in order. ``threads`` per command defaults to this
    machine's cores divided between the ``jobs`` that run at once."""
    if executor not in EXECUTORS:
        raise LanceError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise LanceError(f"--jobs must be a positive whole number, got {jobs!r}.")
    argvs = [lance_argv(c) for c in commands]  # every command is checked before one is submitted
    if not argvs:
        return []
    threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // jobs)
    folder = Path(folder) / "%j"
    ex = _executor(executor, folder, jobs, threads, partition=partition, time_min=time_min, gpus=gpus)
    if executor == "slurm":  # one array; SLURM keeps at most `jobs` of it running
        running = _submit_array(ex, argvs, threads)
        log(f"submitted {len(running)} commands as SLURM array {running[0].job_id.split('_')[0]}")
        while not all(j.done() for j in running):
            time.sleep(poll_s)
        return [_report(_outcome(c, j), log) for c, j in zip(commands, running)]
    outcomes: dict[int, Outcome] = {}
    pending = list(enumerate(argvs))
    active: dict[int, object] = {}
    while pending or active:
        while pending and len(active) < jobs:
            i, argv = pending.pop(0)
            active[i] = ex.submit(_run_one, argv, threads)
            log(f"started {commands[i]} (job {active[i].job_id})")
        for i in [i for i, j in active.items() if j.done()]:
            outcomes[i] = _report(_outcome(commands[i], active.pop(i)), log)
        time.sleep(poll_s if active else 0)
    return [outcomes[i] for i in range(len(argvs))]


def _report(o: Outcome, log: Callable) -> Outcome:
    log(f"{o.status}: {o.command} (job {o.job_id}; log {o.stdout})")
    if o.status == "failed":
        log("  " + o.tail.replace("\n", "\n  "))
    return o
