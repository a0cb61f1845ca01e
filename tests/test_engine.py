"""`python -m lance plan --run`: planned commands through submitit, on this machine (local
executor) and on a real single-node SLURM cluster brought up from Debian's packages.

The plan here is two tiny latency runs on the sample photographs (seconds each) and, for the
local executor, a third whose input is bad: it fails alone, with its log's tail reported.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import lance.models
from lance.cli import main

pytestmark = pytest.mark.skipif(lance.models.weights_file("mcunet-in2") is None,
                                reason="needs the MCUNet weights (LANCE_WEIGHTS_DIR or ../shared/weights)")
submitit = pytest.importorskip("submitit")

TINY = ("python -m lance latency --model mcunet-in2 --batch-size 4 --layers 1 --methods bp lance "
        "--iterations 1 --trials 1 --calibration-batches 1 --data samples --threads 1")


def _plan(tmp_path: Path, seeds, bad: bool = False) -> Path:
    results = tmp_path / "results"
    runs = [{"group": "tiny", "kind": "latency", "match": {"model": "mcunet-in2", "seed": s},
             "command": f"{TINY} --seed {s} --out {results}/latency/tiny_s{s}.json"} for s in seeds]
    if bad:
        runs.append({"group": "tiny", "kind": "latency", "match": {"model": "mcunet-in2", "seed": 99},
                     "command": f"{TINY} --seed 99 --batch-size 0 --out {results}/latency/bad.json"})
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(runs))
    return path


def _run_plan(tmp_path, plan, executor, *extra):
    return main(["plan", "--plan", str(plan), "--results", str(tmp_path / "results"), "--run",
                 "--executor", executor, "--jobs-dir", str(tmp_path / "jobs"), *extra])


@pytest.mark.slow
def test_the_local_executor_runs_the_missing_commands_and_reports_a_failure_alone(tmp_path, capsys):
    plan = _plan(tmp_path, [1, 2], bad=True)
    assert _run_plan(tmp_path, plan, "local", "--jobs", "2") == 1  # one command failed
    out = capsys.readouterr().out
    for s in (1, 2):
        record = json.loads((tmp_path / "results" / "latency" / f"tiny_s{s}.json").read_text())
        assert record["config"]["seed"] == s
    assert "2 of 3 commands done" in out and "batch_size must be a positive whole number" in out  # the log's tail
    assert not (tmp_path / "results" / "latency" / "bad.json").exists()
    # run again: only what is missing is submitted
    assert _run_plan(tmp_path, _plan(tmp_path, [1, 2]), "local") == 0
    assert "0 of 0 commands done" in capsys.readouterr().out


# --- a single-node SLURM cluster ----------------------------------------------------------------

SLURM_CONF = """\
ClusterName=lance-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drain(env: dict, wait_s: float = 60) -> None:
    """Let the jobs' steps end (and cancel what is left) while the daemons still run: a step whose
    controller is gone would wait for it forever."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env).stdout.strip()
        if not queue:
            return
        time.sleep(1)
    subprocess.run(["scancel", "--full", "--user", "root"], env=env, check=False)
    time.sleep(3)


@pytest.fixture
def slurm_cluster(tmp_path_factory, monkeypatch):
    """munged, slurmctld and slurmd from a slurm.conf in a temporary folder; stopped afterwards by
    their pid files."""
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sinfo")):
        pytest.skip("needs root and Debian's slurm-wlm and munge (make setup installs them as root)")
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=_free_port(), d_port=_free_port(), d=d,
                                      cpus=os.cpu_count() or 1))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    started = []
    munge_pid = Path("/run/munge/munged.pid")
    if not munge_pid.exists():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "munge:munge", "/run/munge"], check=False)
        subprocess.run(["munged", "--force"], check=True)
        started.append(munge_pid)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld"], check=True, env=env)
    started.append(d / "slurmctld.pid")
    subprocess.run(["slurmd"], check=True, env=env)
    started.append(d / "slurmd.pid")
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
            if state.strip() == "idle":
                break
            time.sleep(1)
        else:
            pytest.fail(f"the SLURM node did not come up: {state!r}; see {d}/slurmctld.log")
        yield d
    finally:
        _drain(env)
        for pid_file in reversed(started):
            try:
                os.kill(int(pid_file.read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass


@pytest.mark.slow
@pytest.mark.slurm
def test_plan_runs_as_a_slurm_job_array(tmp_path, slurm_cluster, capsys):
    plan = _plan(tmp_path, [1, 2])
    assert _run_plan(tmp_path, plan, "slurm", "--jobs", "2", "--time-min", "10") == 0
    out = capsys.readouterr().out
    assert "as SLURM array" in out and "2 of 2 commands done" in out
    arrays = set()
    for s in (1, 2):
        record = json.loads((tmp_path / "results" / "latency" / f"tiny_s{s}.json").read_text())
        slurm = record["provenance"]["slurm"]
        assert slurm["job_id"] and "array_task_id" in slurm
        arrays.add(slurm["array_job_id"])
    assert len(arrays) == 1  # one array


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs sbatch (Debian's slurm-client)")
def test_a_slurm_plan_without_a_controller_is_one_line_and_runs_nothing(tmp_path, capsys, monkeypatch):
    conf = tmp_path / "slurm.conf"  # a controller nobody listens for (port 1): sbatch gives up after ~10 s
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=1\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    plan = _plan(tmp_path, [1])
    assert _run_plan(tmp_path, plan, "slurm", "--time-min", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: sbatch could not submit the plan (") and "--executor local" in err[-1]
    assert "Unable to contact slurm controller" in err[-1]
    assert not (tmp_path / "results").exists()
