"""Run as a script under 2 gloo processes: the future anchor, the dense all-action loss and the
count reconstruction inside DDP, each rank on its slice of a fixed batch (see future_case)."""

from __future__ import annotations

import argparse
import datetime as dt
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.helpers.future_case import make_case, make_model, slice_case, total_loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="4,4", help="users per rank")
    args = p.parse_args()
    dist.init_process_group("gloo", timeout=dt.timedelta(seconds=60))
    rank = dist.get_rank()
    sizes = [int(s) for s in args.sizes.split(",")]
    case = make_case(sum(sizes))
    lo = sum(sizes[:rank])
    model = make_model()
    ddp = DistributedDataParallel(model)
    loss = total_loss(ddp.module, slice_case(case, lo, lo + sizes[rank]), forward=ddp)
    loss.backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    torch.save({"loss": loss.detach(), "grads": grads}, os.path.join(args.out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
