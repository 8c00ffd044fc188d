"""Run as a script under 2 gloo processes: anchored InfoNCE with the global gather inside DDP.

Each rank embeds its slice of a fixed random batch with a small linear model wrapped in
DistributedDataParallel, computes the loss over global candidates, backpropagates, and saves its
loss and the (DDP-averaged) gradients to ``{out}/rank{R}.pt``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from qanchor_pl.train.losses import anchored_infonce
from tests.helpers.infonce_case import make_case, make_towers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="4,4", help="rows per rank")
    p.add_argument("--margin", type=float, default=None)
    args = p.parse_args()
    # A stuck collective fails in a minute instead of hanging the test until its timeout.
    dist.init_process_group("gloo", timeout=dt.timedelta(seconds=60))
    rank = dist.get_rank()
    sizes = [int(s) for s in args.sizes.split(",")]
    x_u, x_v = make_case(sum(sizes))
    lo = sum(sizes[:rank])
    towers = make_towers()
    ddp = DistributedDataParallel(towers)
    u, v = ddp(x_u[lo : lo + sizes[rank]], x_v[lo : lo + sizes[rank]])
    loss, stats = anchored_infonce(u, v, 0.1, margin=args.margin)
    loss.backward()
    grads = {n: q.grad.clone() for n, q in towers.named_parameters()}
    torch.save(
        {"loss": loss.detach(), "grads": grads, "candidates": stats.candidates},
        os.path.join(args.out, f"rank{rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
