"""A fixed random batch for the future-anchor losses: users' inputs, future events, counts."""

from __future__ import annotations

import torch
from torch import nn

from data_modules.loading.collate import category_key
from qanchor_pl.model.categories import CategoryIndex
from qanchor_pl.train.future import FutureHeads, FutureSpec

CATS = {"a": ("x", "y", "z"), "b": ("p",)}
DIM, EMB = 5, 4


def make_case(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    keys = {
        m: torch.tensor([category_key(c) for c in cs] + [category_key("unseen"), 0]) for m, cs in CATS.items()
    }
    case = {"x": torch.randn(n, 6, generator=g), "qa_source": ["future" if i % 3 == 0 else "uqa:t" for i in range(n)],
            "future": {}, "event_category": {}, "event_mask": {}, "vocab_sample": {}}  # fmt: skip
    for m in CATS:
        f = 5
        pick = torch.randint(0, len(keys[m]), (n, f), generator=g)
        mask = torch.rand(n, f, generator=g) < 0.7
        case["future"][m] = {
            "ids": torch.where(torch.rand(n, f, generator=g) < 0.9, torch.randint(0, 9, (n, f), generator=g), -1),
            "age": torch.rand(n, f, generator=g) * 30, "category": keys[m][pick] * mask, "mask": mask,
            "vectors": torch.randn(n, f, DIM, generator=g), "logq": -torch.rand(n, f, generator=g) * 3,
        }  # fmt: skip
        hist = torch.randint(0, len(keys[m]), (n, 7), generator=g)
        case["event_mask"][m] = torch.rand(n, 7, generator=g) < 0.8
        case["event_category"][m] = keys[m][hist]
        case["vocab_sample"][m] = {"vectors": torch.randn(3, DIM, generator=g),
                                   "category": torch.zeros(3, dtype=torch.int64), "logq": torch.full((3,), -2.0)}  # fmt: skip
    return case


def slice_case(case: dict, lo: int, hi: int) -> dict:
    out = {"x": case["x"][lo:hi], "qa_source": case["qa_source"][lo:hi], "vocab_sample": case["vocab_sample"]}
    out["future"] = {m: {k: t[lo:hi] for k, t in f.items()} for m, f in case["future"].items()}
    for key in ("event_category", "event_mask"):
        out[key] = {m: t[lo:hi] for m, t in case[key].items()}
    return out


class Tiny(nn.Module):
    """u = normalise(linear(x)), and the three heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(6, EMB)
        index = CategoryIndex(CATS)
        self.multi = FutureHeads(EMB, index, list(CATS), {m: DIM for m in CATS},
                                 FutureSpec(weight=1.0, queries="future"), reconstruction=True)  # fmt: skip
        self.dense = FutureHeads(EMB, index, list(CATS), {m: DIM for m in CATS},
                                 FutureSpec(weight=1.0, form="dense", max_events=3), reconstruction=False)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.encoder(x), dim=-1)


def make_model() -> Tiny:
    return Tiny()


def total_loss(model: Tiny, case: dict, forward=None) -> torch.Tensor:
    u = (forward or model)(case["x"])
    return (
        model.multi.future_loss(case, u)
        + model.multi.reconstruction_loss(case, u)
        + model.dense.future_loss(case, u)
    )
