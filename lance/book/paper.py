"""The paper's reported numbers, for tables that put them beside ours.

They are read from ``data/paper/*.csv`` (transcribed from the paper's tables; see the README
there) and always come labelled as the paper's: nothing here is computed by this project.
"""

from __future__ import annotations

from pathlib import Path

# the models as the paper names them, by this package's names for them
PAPER_MODEL_NAMES = {"mcunet-in2": "MCUNet", "mobilenet_v2": "MobileNetV2", "resnet18": "ResNet18",
                     "resnet34": "ResNet34"}

__all__ = ["paper_finetuning", "paper_continual", "PAPER_DIR", "PAPER_MODEL_NAMES"]

PAPER_DIR = Path(__file__).resolve().parents[2] / "data" / "paper"


def paper_finetuning():
    """Tables 1, 2, 8 and 9 of the paper: one row per (table, model, method, layers, dataset,
    batch size) with ``acc`` (%), ``mb`` (activation MB) and ``tflops`` as printed (Tables 8-9's
    GFLOPs converted to TFLOPs)."""
    import pandas as pd

    return pd.read_csv(PAPER_DIR / "finetuning.csv", dtype={"table": str})


def paper_continual():
    """Published continual-learning numbers (GPM's Table 1 and the LANCE paper's text): one row
    per (source, benchmark, method) with ``acc``, ``bwt`` (%) and their standard deviations."""
    import pandas as pd

    return pd.read_csv(PAPER_DIR / "continual.csv")
