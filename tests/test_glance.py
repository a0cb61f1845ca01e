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


@pytest.mark.parametrize("spreads, verdict", [([float("nan"), float("nan")], "partly"),  # one seed: the plain bounds
                                              ([0.1, 0.3], "partly"),  # 2 sd = 0.6 does not cover 3.0 points
                                              ([0.1, 1.6], "reproduced"),  # 2 sd = 3.2 covers 3.0 points
                                              ([0.1, 3.0], "reproduced")])
def test_a_difference_within_twice_its_seed_spread_is_not_counted_against_us(spreads, verdict):
    assert glance.verdict_for_gap([5.0, 2.8], [4.9, 5.8], spreads) == verdict
    assert glance.verdict_for_gap([5.0, -10.0], [4.9, 5.8], spreads[:1] + [3.0]) == "not reproduced"  # 15.8 > 6


def test_a_gap_with_several_seeds_is_shown_as_mean_and_spread():
    rows = pd.DataFrame([{"model": "m", "method": meth, "layers": n, "epochs": 50, "acc": acc, "acc sd": sd,
                          "seeds": seeds, "acc (paper)": paper}
                         for meth, n, acc, sd, seeds, paper in [("bp", 2, 64.0, 0.3, 3, 52.0), ("lance", 2, 59.0, 0.4, 3, 47.0),
                                                                ("bp", 4, 67.0, float("nan"), 1, 58.0),
                                                                ("lance", 4, 64.0, float("nan"), 1, 52.0)]])
    row = glance._gap_row(rows, "m", "M", "Table 2")
    assert row["ours"] == "5.0 ± 0.5 / 3.0 points (3 / 1 seeds)"  # sqrt(0.3^2 + 0.4^2) = 0.5


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
