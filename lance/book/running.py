"""The size of the paper's plan, for the page "Running the paper's plan": per group of runs, how
many are planned and done, the hours the done ones took on CPUs and on GPUs (from the wall
times their result files record), and an estimate for the missing ones at the done ones' pace.
"""

from __future__ import annotations

__all__ = ["plan_size", "plan_size_markdown"]


def plan_size(status=None):
    """One row per group of :data:`lance.experiments.plan.PLAN`, and a total."""
    import pandas as pd

    from lance.experiments.plan import plan_status

    status = plan_status() if status is None else status
    rows = []
    for group, g in status.groupby("group", sort=False):
        done, planned = int(g.done.sum()), len(g)
        cpu, gpu = float(g.hours.sum() - g["gpu hours"].sum()), float(g["gpu hours"].sum())
        pace = (cpu + gpu) / done if done else float("nan")
        rows.append({"group": group, "planned": planned, "done": done, "CPU hours": cpu, "GPU hours": gpu,
                     "hours left (estimate)": pace * (planned - done)})
    table = pd.DataFrame(rows)
    total = {"group": "all runs", **{c: table[c].sum() for c in table.columns if c != "group"}}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def plan_size_markdown(table=None) -> str:
    from lance.book.render import markdown_table

    table = plan_size() if table is None else table
    total = table.iloc[-1]
    caption = (f"The book's plan: {int(total['planned'])} runs, {int(total['done'])} with a result file; hours are "
               "the wall-clock time the done runs took on the machines that ran them (their result files), the "
               "estimate assumes the same pace for the missing ones of a group.")
    shown = table.rename(columns={"group": "Group of runs", "planned": "Planned", "done": "Done"})
    gpu = float(total["GPU hours"])
    note = ("No committed run was made on a GPU yet: the GPU column fills in as result files that record a "
            "`cuda` device land." if gpu == 0 else f"{gpu:.1f} of the hours were spent on GPUs.")
    return (markdown_table(shown, caption, "tbl-plan-size", constant_to_caption=False,
                           formats={"CPU hours": "{:.1f}", "GPU hours": "{:.1f}", "hours left (estimate)": "{:.1f}",
                                    "Planned": "{:d}", "Done": "{:d}"})
            + "\n\n" + note + "\n")
