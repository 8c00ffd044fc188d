"""The **scatter** stage of a partitioned build: each task reads its share of the raw events
files once, checks every row and files it under the partition that owns its user.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data_modules.builder.events import scatter_events
from data_modules.builder.plan import BuildPlan, WorkFolder, publish_dir
from data_modules.util.atomic import write_json
from data_modules.util.partition import PartitionSpec, owner_expr

log = logging.getLogger(__name__)


# -- stats ----------------------------------------------------------------------------------------
def run_scatter(plan: BuildPlan, work: WorkFolder, spec: PartitionSpec) -> None:
    """The scatter pass of one task: its share of the raw files, read once, rows checked and filed
    by owning partition (skipped if already done for this plan)."""
    if spec.index not in work.missing(plan, "scatter"):
        log.warning("scatter %s: already done, skipped", spec.name)
        return
    files = {k: Path(plan.events[k]) for k in plan.scatter_files[spec.index]}

    def scatter_into(folder: Path) -> None:
        scatter_events(files, plan.event_mods, owner_expr(plan.partitions), folder)
        write_json(folder / "done.json", {"fingerprint": plan.fingerprint, "files": sorted(files)})

    publish_dir(scatter_into, work.scatter_dir(spec))
