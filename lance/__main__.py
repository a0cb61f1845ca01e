"""Command line: ``python -m lance COMMAND ...`` (also installed as ``lance``).

Each command is a function ``_cmd_NAME(args) -> int`` registered in :func:`build_parser` with
its own sub-parser; add a command by adding both.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_status_page(args: argparse.Namespace) -> int:
    from .provenance import status_page

    out = status_page(args.executed_dir, args.out)
    print(f"status page: {out}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import json

    from .benchmark import BenchmarkConfig, format_report, run_benchmark
    from .provenance import write_text_atomic

    cfg = BenchmarkConfig(model=args.model, resolution=args.resolution, batch_size=args.batch_size,
                          energy=args.energy, layer_counts=tuple(args.layers),
                          calibration_batches=args.calibration_batches, repeats=args.repeats,
                          seed=args.seed, weights_dir=args.weights_dir, threads=args.threads)
    out = run_benchmark(cfg)
    print()
    print(format_report(out))
    if args.out:
        if args.out.exists() and not args.force:
            print(f"not overwriting {args.out}: pass --force to replace it")
            return 1
        write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lance", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "status-page",
        help="write the book's 'Status and reproducibility' page from papermill-executed notebooks",
    )
    p.add_argument("executed_dir", type=Path, help="directory of notebooks executed by papermill")
    p.add_argument("out", type=Path, help="MyST markdown file to write (atomically)")
    p.set_defaults(func=_cmd_status_page)

    p = commands.add_parser(
        "benchmark",
        help="time and saved bytes of one training step, BP against LANCE (ResNet18, 224 px, batch 128)",
    )
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34"])
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--energy", type=float, default=0.7)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="numbers of last conv layers to train")
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--weights-dir", default=None, help="directory with torchvision ImageNet weights "
                   "(default: $LANCE_WEIGHTS_DIR)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures and provenance as JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_benchmark)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
