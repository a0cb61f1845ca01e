"""``python -m lance``: the command line (:mod:`lance.cli`)."""

from lance.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
