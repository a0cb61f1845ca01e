"""Command line: ``python -m lance COMMAND ...`` (also installed as ``lance``).

Each command is a function ``_cmd_NAME(args) -> int`` registered in :func:`build_parser` with
its own sub-parser; add a command by adding both.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_status_page(args: argparse.Namespace) -> int:
    from lance.book.status import status_page

    out = status_page(args.executed_dir, args.out)
    print(f"status page: {out}")
    return 0


def _cmd_glance(args: argparse.Namespace) -> int:
    from lance.book.glance import glance_markdown
    from lance.experiments.results import write_atomic

    write_atomic(args.out, glance_markdown(), overwrite=True)
    print(f"results at a glance: {args.out}")
    return 0


def _cmd_plan_size(args: argparse.Namespace) -> int:
    from lance.book.running import plan_size_markdown
    from lance.experiments.results import write_atomic

    write_atomic(args.out, plan_size_markdown(), overwrite=True)
    print(f"the plan's size: {args.out}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import json

    from lance.experiments.benchmark import BenchmarkConfig, format_report, result_record, run_benchmark
    from lance.experiments.config import given_options
    from lance.experiments.results import write_atomic

    cfg = BenchmarkConfig(**given_options(args, BenchmarkConfig), weights_dir=args.weights_dir, threads=args.threads)
    out = run_benchmark(cfg, device=args.device)
    print()
    print(format_report(out))
    if args.out:  # main() refused an existing --out without --force before the benchmark ran
        write_atomic(args.out, json.dumps(result_record(out), indent=2) + "\n", overwrite=True)
        print(f"wrote {args.out}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from lance.experiments.config import given_options
    from lance.experiments.finetune import PROFILES, FinetuneConfig, finetune

    cfg = dataclasses.replace(PROFILES[args.profile], **given_options(args, FinetuneConfig))
    out = None if args.no_save else args.out
    record = finetune(cfg, data_dir=args.data_dir, weights_dir=args.weights_dir, cache_dir=args.cache_dir,
                      out_dir=out, checkpoint_dir=None if args.no_save else args.checkpoint_dir, overwrite=args.force,
                      progress=not args.no_progress, device=args.device)
    m = record["metrics"]
    print(f"{cfg.model} {cfg.dataset} {cfg.method} L{cfg.layers}: accuracy {m['accuracy']:.2f} %, "
          f"activation {m['activation_mb']:.3f} MiB (measured {m['activation_mb_measured']:.3f}), "
          f"{m['train_tflops']:.4f} TFLOPs per iteration")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Every combination of models x methods x layers (x batch sizes), skipping finished ones."""
    import dataclasses
    import itertools
    import sys
    import traceback

    from lance.experiments.results import check_same_config
    from lance.errors import LanceError
    from lance.experiments.config import distinct
    from lance.experiments.finetune import finetune, result_name

    from lance.experiments.device import resolve_device

    resolve_device(args.device)  # a missing GPU: one line now, not after the first run
    for name in _GRID.values():  # a repeated value would run the same configuration twice
        distinct(f"--{name.replace('_', '-')}", getattr(args, name) or [])
    grid = itertools.product(args.models, args.layers, args.batch_sizes, args.energies, args.calibration_batches,
                             args.seeds, args.lrs or [None], args.methods)
    configs = [_sweep_config(args, *point) for point in grid]  # every point is checked before any run starts
    failures = 0
    for cfg in configs:
        name = result_name(cfg)
        if (args.out / name).exists():
            check_same_config(args.out / name, dataclasses.asdict(cfg))
            print(f"done already: {name}", flush=True)
            continue
        lock = _claim(Path(args.checkpoint_dir) / (name[:-len(".json")] + ".lock"))
        if lock is None:  # another sweep (or `plan --run` in a second terminal) is on it
            print(f"running in another process, skipped here: {name}", flush=True)
            continue
        print(f"running: {name}", flush=True)
        try:
            finetune(cfg, data_dir=args.data_dir, weights_dir=args.weights_dir, cache_dir=args.cache_dir,
                     out_dir=args.out, checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress,
                     device=args.device)
        except LanceError as err:  # bad input or a diverged run: one line, and on with the other runs
            failures += 1
            print(f"error: {name}: {err}", file=sys.stderr, flush=True)
        except Exception:  # a bug: the whole traceback, and on with the other runs
            failures += 1
            traceback.print_exc()
        finally:
            lock.unlink(missing_ok=True)
    return 1 if failures else 0


# the sweep's grid: each a list on the command line, one value per run
_GRID = {"model": "models", "method": "methods", "layers": "layers", "batch_size": "batch_sizes",
         "energy": "energies", "calibration_batches": "calibration_batches", "seed": "seeds", "lr": "lrs"}


def _sweep_config(args: argparse.Namespace, model, layers, bs, energy, n_cal, seed, lr, method):
    import dataclasses

    from lance.experiments.config import given_options
    from lance.experiments.finetune import PROFILES, FinetuneConfig

    fixed = {k: v for k, v in given_options(args, FinetuneConfig).items() if k not in _GRID}
    values = dict(fixed, model=model, method=method, layers=layers, batch_size=bs, seed=seed, energy=energy)
    if lr is not None:
        values["lr"] = lr
    if n_cal:
        values["calibration_batches"] = n_cal
    return dataclasses.replace(PROFILES[args.profile], **values)


def _cmd_latency(args: argparse.Namespace) -> int:
    """The paper's latency experiment (Sec. 3.4, Fig. 5): forward / backward / total time per step."""
    from lance.experiments.config import given_options
    from lance.experiments.latency import LatencyConfig, format_latency, result_record, run_latency
    from lance.experiments.results import write_result

    record = run_latency(LatencyConfig(**given_options(args, LatencyConfig)), data_dir=args.data_dir,
                         weights_dir=args.weights_dir, device=args.device)
    print()
    print(format_latency(record))
    if args.out:
        write_result(args.out, result_record(record), overwrite=args.force)
        print(f"wrote {args.out}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from lance.experiments.config import given_options
    from lance.experiments.pretrain import PretrainConfig, checkpoint_name, pretrain
    from lance.experiments.results import check_same_config

    from lance.experiments.device import resolve_device

    cfg = PretrainConfig(**given_options(args, PretrainConfig))
    resolve_device(args.device)  # a missing GPU: one line, before the lock and the data
    name = checkpoint_name(cfg)
    result, weights = Path(args.results) / f"{name}.json", Path(args.out) / f"{name}.pt"
    if result.exists() and weights.exists() and not args.force:
        check_same_config(result, dataclasses.asdict(cfg))
        print(f"done already: {result} (weights {weights}); pass --force to train again")
        return 0
    lock = _claim(Path(args.out) / f"{name}.lock")
    if lock is None:  # e.g. `plan --run` in a second terminal: go on with other work
        print(f"{name} is being pretrained by another process; not started here", flush=True)
        return 0
    try:
        record = pretrain(cfg, data_dir=args.data_dir, out_dir=args.out, results_dir=args.results,
                          device=args.device)
    finally:
        lock.unlink(missing_ok=True)
    print(f"{cfg.model} on {cfg.dataset} classes {cfg.classes}: {record['metrics']['accuracy']:.2f} %, "
          f"weights {record['metrics']['weights_file']}")
    return 0


def _claim(lock: Path):
    """Lock a configuration, so that two sweeps (or pretrainings) in parallel never run the same
    one (:func:`lance.experiments.locks.claim`); None if another live process holds it."""
    from lance.experiments.locks import claim

    return claim(lock)


def _cmd_continual(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from lance.experiments.config import distinct, given_options
    from lance.experiments.results import check_same_config
    from lance.data.tasks import build_benchmark
    from lance.experiments.continual import ContinualConfig, cl_result_name, continual, profile_settings

    from lance.experiments.device import resolve_device

    resolve_device(args.device)  # a missing GPU: one line now, not after the benchmark is built
    distinct("--methods", args.methods)
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmark = None
    for method in args.methods:
        given = given_options(args, ContinualConfig)
        values = {**profile_settings(args.benchmark, args.profile), **given}
        if "threshold_base" in given and "layer_thresholds" not in given:
            values["layer_thresholds"] = ()  # the user's threshold replaces the benchmark's per-layer ones
        cfg = ContinualConfig(**{**values, "method": method}).validate()
        name = cl_result_name(cfg)
        if (args.out / name).exists() and not args.force:
            check_same_config(args.out / name, dataclasses.asdict(cfg), ignore=("model",))
            print(f"done already: {args.out / name}")
            continue
        if benchmark is None:
            benchmark = build_benchmark(args.benchmark, data_dir=args.data_dir, val_fraction=cfg.val_fraction,
                                        seed=cfg.data_seed, train_limit=cfg.train_limit, test_limit=cfg.test_limit)
            if benchmark.skipped:
                print(f"not found here, left out: {', '.join(benchmark.skipped)}")
        lock = _claim(args.checkpoint_dir / (name[:-len(".json")] + ".lock"))
        if lock is None:
            print(f"running in another process, skipped here: {name}", flush=True)
            continue
        print(f"running: {name}", flush=True)
        try:
            record = continual(cfg, benchmark=benchmark, out_dir=None if args.no_save else args.out,
                               checkpoint_dir=None if args.no_save else args.checkpoint_dir,
                               progress=not args.no_progress, overwrite=args.force, device=args.device)
        finally:
            lock.unlink(missing_ok=True)
        m = record["metrics"]
        bwt = "n/a" if m["bwt"] is None else f"{m['bwt']:.2f}"
        print(f"{args.benchmark} {method}: ACC {m['acc']:.2f} %, BWT {bwt}, memory between tasks "
              f"{m['memory_mb']:.3f} MiB, training memory {m['training_mb']:.3f} MiB", flush=True)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    """List the planned paper-scale runs and which have result files; with --run, run the
    commands of the missing ones, in the plan's order (pretraining before the fine-tuning that
    needs it), each command once."""
    import re

    from lance.errors import LanceError
    from lance.experiments.device import DEVICE_HELP, resolve_device
    from lance.experiments.engine import run_commands
    from lance.experiments.plan import group_summary, load_plan, plan_status

    if args.run and args.executor == "local":
        resolve_device(args.device)  # a missing GPU: one line, before anything runs
    elif args.device not in ("cpu", "auto") and not re.fullmatch(r"cuda(:\d+)?", args.device):
        raise LanceError(f"unknown device {args.device!r}; choose {DEVICE_HELP}.")  # SLURM: checked on the node
    if args.time_min < 1 or args.gpus < 0 or args.jobs < 1:
        raise LanceError(f"--time-min and --jobs must be at least 1 and --gpus at least 0; got {args.time_min}, "
                         f"{args.jobs} and {args.gpus}.")
    if args.results and Path(args.results).exists() and not Path(args.results).is_dir():
        raise LanceError(f"--results {args.results} is not a folder; pass the folder that holds finetune/, "
                         "continual/, ... (default: the project's data/results).")
    if args.results and not Path(args.results).exists():
        print(f"note: {args.results} does not exist yet: every planned run counts as missing")
    status = plan_status(args.results, load_plan(args.plan) if args.plan else None)
    if args.group:
        status = status[status.group.str.contains(args.group, case=False, regex=False)]
    if len(status) == 0:
        print(f"no planned run's group contains {args.group!r}" if args.group else "the plan has no runs")
        return 1
    summary = group_summary(status).set_index("group")
    for group, rows in status.groupby("group", sort=False):
        g = summary.loc[group]
        left = g["hours left (estimate)"]
        pace = ("" if g["done"] == g["planned"] or left is None or left != left
                else f", about {left:.1f} h more at that pace")
        print(f"{group}: {int(rows.done.sum())} of {len(rows)} with a result file ({g['hours spent']:.1f} h{pace})")
        for row in rows.itertuples():
            print(f"  {'done   ' if row.done else 'missing'} {row.setting}")
    commands = list(dict.fromkeys(status[~status.done].command))
    if args.device != "cpu":  # every planned command computes, and each takes --device
        commands = [f"{c} --device {args.device}" for c in commands]
    if not args.run:
        if commands:
            print("\nto run the missing ones (add --run to run them here, in this order):")
            print("\n".join(f"  {c}" for c in commands))
        return 0
    outcomes = run_commands(commands, executor=args.executor, jobs=args.jobs, folder=args.jobs_dir,
                            partition=args.partition, time_min=args.time_min, gpus=args.gpus)
    failed = [o for o in outcomes if o.status != "done"]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} commands done" + (
        "; failed: " + ", ".join(f"{o.command} (log {o.stderr})" for o in failed) if failed else ""))
    return 1 if failed else 0


def _device_option(p: argparse.ArgumentParser) -> None:
    from lance.experiments.device import DEVICE_HELP

    p.add_argument("--device", default="cpu", help=f"where the run computes: {DEVICE_HELP} (default: cpu)")


def _run_options(p: argparse.ArgumentParser, out: str, checkpoints: str) -> None:
    """The options every training command shares: data, result and checkpoint directories, and
    whether to save, overwrite and show progress."""
    p.add_argument("--data-dir", default=None, help="datasets directory (default: $LANCE_DATA_DIR)")
    p.add_argument("--out", type=Path, default=Path(out), help="where result files go")
    p.add_argument("--checkpoint-dir", type=Path, default=Path(checkpoints))
    p.add_argument("--no-save", action="store_true", help="write neither result files nor checkpoints (a trial run)")
    p.add_argument("--force", action="store_true", help="replace existing result files")
    p.add_argument("--no-progress", action="store_true")


def _parser_status_page(commands) -> None:
    p = commands.add_parser(
        "status-page",
        help="write the book's 'Status and reproducibility' page from papermill-executed notebooks",
    )
    p.add_argument("executed_dir", type=Path, help="directory of notebooks executed by papermill")
    p.add_argument("out", type=Path, help="MyST markdown file to write (atomically)")
    p.set_defaults(func=_cmd_status_page)


def _parser_glance(commands) -> None:
    p = commands.add_parser("glance", help="write the front page's 'results at a glance' table from the result files")
    p.add_argument("out", type=Path, help="MyST markdown file to write (atomically); the intro includes it")
    p.set_defaults(func=_cmd_glance)


def _parser_plan_size(commands) -> None:
    p = commands.add_parser("plan-size", help="write the table of the plan's size (runs, CPU and GPU hours) for "
                            "the page 'Running the paper's plan'")
    p.add_argument("out", type=Path, help="MyST markdown file to write (atomically); book/running.md includes it")
    p.set_defaults(func=_cmd_plan_size)


def _parser_benchmark(commands) -> None:
    from lance.experiments.benchmark import BenchmarkConfig
    from lance.experiments.config import add_options

    p = commands.add_parser(
        "benchmark",
        help="time and saved bytes of one training step, BP against LANCE (ResNet18, 224 px, batch 128)",
    )
    add_options(p, BenchmarkConfig, names={"layer_counts": "--layers"})
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--weights-dir", default=None, help="directory with torchvision ImageNet weights "
                   "(default: $LANCE_WEIGHTS_DIR)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures and provenance as JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    _device_option(p)
    p.set_defaults(func=_cmd_benchmark)


def _parser_finetune(commands) -> None:
    from lance.experiments.config import add_options
    from lance.experiments.finetune import FinetuneConfig

    p = commands.add_parser("finetune", help="fine-tune the last n layers with BP, HOSVD, ASI or LANCE")
    p.add_argument("--profile", default="paper", choices=["smoke", "book", "paper"],
                   help="defaults for the size of the run (paper: the paper's full setting)")
    add_options(p, FinetuneConfig, metavars={"classes": ("FIRST", "END")})
    _device_option(p)
    p.add_argument("--weights-dir", default=None, help="weights directory (default: $LANCE_WEIGHTS_DIR)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $LANCE_CACHE_DIR or ~/.cache/lance)")
    _run_options(p, "data/results/finetune", "_build/checkpoints")
    p.set_defaults(func=_cmd_finetune)


def _parser_sweep(commands) -> None:
    from lance.experiments.config import add_options
    from lance.experiments.finetune import FinetuneConfig

    p = commands.add_parser("sweep", help="run many fine-tuning configurations, skipping finished ones")
    p.add_argument("--profile", default="paper", choices=["smoke", "book", "paper"])
    p.add_argument("--models", nargs="+", default=["mcunet-in2"])
    p.add_argument("--methods", nargs="+", default=["lance", "bp", "asi", "hosvd"])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[128])
    p.add_argument("--energies", type=float, nargs="+", default=[0.7])
    p.add_argument("--calibration-batches", dest="calibration_batches", type=int, nargs="+", default=[0],
                   help="numbers of calibration batches (0: the profile's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help="learning rates (default: the paper's 0.05)")
    # every other field of a fine-tuning run: one value for the whole sweep, its default in the dataclass
    add_options(p, FinetuneConfig, exclude=_GRID, metavars={"classes": ("FIRST", "END")})
    p.add_argument("--data-dir", default=None, help="datasets directory (default: $LANCE_DATA_DIR)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("data/results/finetune"))
    p.add_argument("--checkpoint-dir", type=Path, default=Path("_build/checkpoints"))
    p.add_argument("--no-progress", action="store_true")
    _device_option(p)
    p.set_defaults(func=_cmd_sweep)


def _parser_latency(commands) -> None:
    from lance.experiments.config import add_options
    from lance.experiments.latency import LatencyConfig

    p = commands.add_parser("latency", help="forward, backward and total time of a fine-tuning step for 1..10 "
                            "trainable layers, BP / HOSVD / ASI / LANCE (the paper's Fig. 5)")
    add_options(p, LatencyConfig, names={"layer_counts": "--layers"})
    p.add_argument("--data-dir", default=None, help="datasets directory (default: $LANCE_DATA_DIR)")
    p.add_argument("--weights-dir", default=None, help="weights directory (default: $LANCE_WEIGHTS_DIR)")
    p.add_argument("--out", type=Path, default=None, help="write the record as a JSON result file (atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    _device_option(p)
    p.set_defaults(func=_cmd_latency)


def _parser_pretrain(commands) -> None:
    from lance.experiments.config import add_options
    from lance.experiments.pretrain import PretrainConfig

    p = commands.add_parser("pretrain", help="pretrain from scratch on half the classes (split-class protocol)")
    add_options(p, PretrainConfig, metavars={"classes": ("FIRST", "END")})
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="_build/weights", help="where the state_dict goes (never committed)")
    p.add_argument("--results", default="data/results/pretrain", help="where the result file goes")
    p.add_argument("--force", action="store_true", help="train again although the result and weights exist")
    _device_option(p)
    p.set_defaults(func=_cmd_pretrain)


def _parser_continual(commands) -> None:
    from lance.experiments.config import add_options
    from lance.experiments.continual import CL_METHODS, ContinualConfig

    p = commands.add_parser("continual", help="continual learning: LANCE / GPM / fine-tuning / multitask on a "
                            "benchmark; finished results are skipped")
    p.add_argument("--methods", nargs="+", default=list(CL_METHODS), choices=list(CL_METHODS))
    p.add_argument("--profile", default="book", choices=["smoke", "book", "paper"],
                   help="smoke: 3 small tasks; book: every task, 10 epochs at most; paper: 200 epochs at most")
    # every field of a run, its default and check in ContinualConfig; the benchmark's own settings and the
    # profile fill in what is not given
    add_options(p, ContinualConfig, exclude=("method",), names={"threshold_base": "--threshold"})
    p.set_defaults(benchmark=ContinualConfig.benchmark)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _run_options(p, "data/results/continual", "_build/checkpoints/continual")
    _device_option(p)
    p.set_defaults(func=_cmd_continual)


def _parser_plan(commands) -> None:
    p = commands.add_parser("plan", help="the paper-scale runs the book plans: which have result files; "
                            "--run runs the missing ones")
    p.add_argument("--group", default=None, help="only groups whose name contains this (e.g. 'Table 2')")
    p.add_argument("--run", action="store_true", help="run the commands of the missing runs (hours to days)")
    p.add_argument("--results", default=None,
                   help="the result directory to match against (default: the project's data/results)")
    p.add_argument("--plan", default=None, help="a plan of one's own: a JSON list of {group, kind, match, command}")
    p.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: processes on this machine; slurm: one job array on a SLURM cluster (the "
                   "result folders must be on a filesystem every node sees)")
    p.add_argument("--jobs", type=int, default=1, help="commands at once (local), array parallelism (slurm)")
    p.add_argument("--jobs-dir", default="_build/jobs", help="where each job's logs go")
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    p.add_argument("--time-min", dest="time_min", type=int, default=24 * 60, help="time limit per job, minutes")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per job (SLURM)")
    p.add_argument("--device", default="cpu", help="passed on to every command it runs: auto, cpu, cuda or cuda:N "
                   "(default: cpu; checked here for the local executor, on the nodes for SLURM)")
    p.set_defaults(func=_cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lance", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_parser_status_page, _parser_glance, _parser_plan_size, _parser_benchmark, _parser_finetune,
                _parser_sweep, _parser_latency, _parser_pretrain, _parser_continual, _parser_plan):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    from lance.errors import LanceError

    args = build_parser().parse_args(argv)
    try:
        _check_paths(args)  # outputs that cannot be written: now, before anything is computed
        return args.func(args)
    except LanceError as err:  # bad input: the message says what to do; no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that is a file where a folder must be, or the reverse, ...
        where = f" {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}:{where}; pass another path.", file=sys.stderr)
        return 2


# options naming folders a command writes into, and files it writes
_FOLDERS = ("checkpoint_dir", "cache_dir", "jobs_dir")
_FILES = {"latency": "out", "benchmark": "out", "glance": "out", "status_page": "out", "plan_size": "out"}


def _check_paths(args: argparse.Namespace) -> None:
    from lance.errors import LanceError
    from lance.experiments.results import check_writable

    for name in _FOLDERS:
        folder = getattr(args, name, None)
        if folder:
            check_writable(Path(folder) / ".probe")
    for name in ("weights_dir", "data_dir"):
        folder = getattr(args, name, None)
        if folder and not Path(folder).is_dir():
            raise LanceError(f"--{name.replace('_', '-')} {folder} is not a folder; pass the folder that holds "
                             f"the {'weights' if name == 'weights_dir' else 'datasets'}.")
    command = (args.command or "").replace("-", "_")
    out = getattr(args, _FILES.get(command, ""), None) if command in _FILES else None
    if out:
        if Path(out).is_dir():
            raise LanceError(f"{out} is a folder; pass the file to write.")
        check_writable(out, overwrite=getattr(args, "force", True))
    if command == "pretrain":
        check_writable(Path(args.results) / ".probe")
        check_writable(Path(args.out) / ".probe")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 0:
        raise LanceError(f"--threads must be 0 (torch's choice) or a positive number, got {threads}.")
