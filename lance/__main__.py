"""``python -m lance``: the command line (:mod:`lance.cli`). The process's allocator is made
steady first (:mod:`lance.experiments.allocator`; ``LANCE_STEADY_ALLOCATOR=0`` keeps glibc's)."""

import sys

from lance.experiments import allocator

if __name__ == "__main__":
    if allocator.wanted() and not (len(sys.argv) > 1 and sys.argv[1] == "benchmark"):  # the benchmark has its own option
        allocator.steady_allocator()
    from lance.cli import main

    raise SystemExit(main())
