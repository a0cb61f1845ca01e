"""The front page's results at a glance (lance.book.glance): the verdict rules and the rows."""

import json

import pandas as pd
import pytest

from lance.book import glance
from lance.experiments.results import RESULTS_DIR


@pytest.mark.parametrize("ours, paper, verdict", [([5.0, 2.8], [4.9, 4.0], "reproduced"),
                                                  ([5.0, 2.8], [4.9, 5.8], "partly"),
                                                  ([6.3, 34.6], [12.7, 5.9], "not reproduced"),
                                                  ([-1.57], [-1.48], "reproduced")])
def test_verdict_for_gap_follows_the_stated_tolerances(ours, paper, verdict):
    assert glance.verdict_for_gap(ours, paper) == verdict


def test_without_result_files_every_claim_is_not_run_here():
    table = glance.claims(pd.DataFrame(), pd.DataFrame(), {})
    assert set(table.verdict) == {"not run here"}
    assert table.claim.is_unique


def test_the_memory_row_is_the_ratio_of_the_committed_files():
    files = {m: RESULTS_DIR / "finetune" / f"mcunet-in2_cifar100_{m}_L2_e0.7_bs128_ep50_s42.json"
             for m in ("bp", "lance")}
    if not all(f.exists() for f in files.values()):
        pytest.skip("the MCUNet 2-layer result files are not committed")
    mb = {m: json.loads(f.read_text())["metrics"]["activation_mb_measured"] for m, f in files.items()}
    row = glance.claims().set_index("claim").filter(like="MCUNet: BP's activation memory", axis=0).iloc[0]
    assert row.ours.split(" / ")[0] == f"{mb['bp'] / mb['lance']:.0f}×"
    assert row.paper.split(" / ")[0] == f"{11.71 / 0.04:.0f}×"  # the paper's Table 2: 11.71 MB against 0.04 MB
    assert row.verdict in {"reproduced", "partly", "not reproduced"}


def test_the_page_is_one_numbered_table_with_a_link_per_row():
    text = glance.glance_markdown()
    assert ":name: tbl-glance" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "{doc}" in line]
    assert len(rows) == len(glance.claims())
