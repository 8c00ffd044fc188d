"""Bitwise-repeatable CPU math: the same seed, data and config give the same weights, run after run.

Seeds alone were not enough. On a busy 2-core machine about 1 run in 8 of the tiny recipe (with a
loader worker) differed from the others from its very first loss (17.714302 vs 17.714405): the
forward pass itself, not the data or the initial weights. Intel MKL, which does torch's CPU matrix
products, may by default pick the number of threads per call at run time (``MKL_DYNAMIC``) and the
code path per call from the memory alignment of its arguments (conditional numerical
reproducibility off), and each choice sums in another order. Pinning both (and OpenMP's own
dynamic threads) made 12 of 12 runs identical under the same load (docs/reliability.md).

The settings are environment variables that MKL and OpenMP read once, when they load: they are set
on importing :mod:`qanchor_pl` or :mod:`data_modules`, before torch, and inherited by every process a job starts (DDP
ranks, loader workers). A value the user set is kept; ``QANCHOR_FAST_MATH=1`` leaves all three unset.
"""

from __future__ import annotations

import os
import sys

PINNED = {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE", "MKL_CBWR": "AUTO,STRICT"}


def pin_cpu_math() -> dict[str, str]:
    """Set the repeatable-math variables (unless the user set them or opted out); returns what is
    in effect. Too late once torch is loaded, which this says on stderr."""
    if os.environ.get("QANCHOR_FAST_MATH") == "1":
        return {}
    missing = {k: v for k, v in PINNED.items() if k not in os.environ}
    if missing and "torch" in sys.modules:
        print(f"qanchor: torch was imported before qanchor_pl; set {sorted(missing)} in the environment for "
              "bitwise-repeatable CPU runs", file=sys.stderr)  # fmt: skip
    for key, value in missing.items():
        os.environ[key] = value
    return {k: os.environ[k] for k in PINNED}
