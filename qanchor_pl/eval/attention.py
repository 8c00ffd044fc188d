"""``qanchor analyze attention``: which inputs each scenario's embedding reads (the paper's Fig. 7).

For every scenario, the attention that the ``<USER_EMB>`` position pays to each group of input
slots: each event modality (its marker tokens, its modality token and its event tokens), the
tabular token, the user token (and marker), the count token, the soft prompt, the query, and
``<USER_EMB>`` itself. Weights are averaged over heads, kept per layer and averaged over layers,
over the users of the scenario's validation carve (the users choices are made on). The base model
(the query alone) and the prompt-tuned one (``--prompts``) side by side, with their difference.

The weights come from the KV-cache path the embedding job uses (prefix once, the scenario's
suffix on its cache): the figure describes the embeddings users get. A test checks that they sum
to 1 per position and equal the uncached model's.

Output: ``attention.json`` (every mass), ``attention.md`` (the overall table), ``attention.png``
(scenarios x groups heatmaps: base | tuned | tuned - base) and the same image in TensorBoard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from data_modules.loading.collate import batch_rows
from qanchor_pl.config import AttentionConfig
from qanchor_pl.model import backbone as bb
from qanchor_pl.model.kv_cache import PrefixCache, encode_prefix, suffix_forward
from qanchor_pl.model.qanchor import QAnchorModel
from qanchor_pl.model.sequence import Role, pack, pack_labels
from qanchor_pl.model.special_tokens import USER_EMB

SELF = USER_EMB
#: Groups that are not the user's inputs: the shares of the rest show which inputs a scenario reads.
NOT_INPUTS = ("prompt", "query", SELF)


@contextlib.contextmanager
def eager_attention(model: QAnchorModel) -> Iterator[None]:
    """Attention weights need the eager kernel (fused kernels never form them); restored after."""
    lm = bb.base_causal_lm(model.backbone)
    before = lm.config._attn_implementation
    lm.set_attn_implementation("eager")
    try:
        yield
    finally:
        lm.set_attn_implementation(before)


def group_masses(
    weights: tuple[torch.Tensor, ...], rows: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Per user and layer, the attention mass of query slot ``rows`` on each key group.

    ``weights``: per layer [B, heads, Q, K]; ``groups``: [B, K] group index per key slot (-1 on
    padding, which the mask gives no weight). Returns [B, layers, n_groups], heads averaged."""
    b = rows.shape[0]
    idx = torch.arange(b, device=rows.device)
    out = []
    for w in weights:
        row = w[idx, :, rows, :].float().mean(1)  # [B, K]: the <USER_EMB> row, heads averaged
        one_hot = torch.zeros(b, groups.shape[1], n_groups + 1, device=row.device)
        one_hot.scatter_(2, (groups + 1).clamp(min=0).unsqueeze(-1).long(), 1.0)  # slot 0: padding
        out.append(torch.einsum("bk,bkg->bg", row, one_hot)[:, 1:])
    return torch.stack(out, 1)


@torch.no_grad()
def cached_attention(
    model: QAnchorModel,
    prefix: PrefixCache,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    prompt: torch.Tensor | None,
    names: list[str],
) -> torch.Tensor:
    """[B, layers, groups] masses of ``<USER_EMB>`` through the KV-cache path (see module docstring)."""
    suffix, out = suffix_forward(model, prefix, query_ids, query_mask, prompt, output_attentions=True)
    keys = torch.cat([prefix.groups, suffix_groups(suffix.role, names)], dim=1)
    return group_masses(out.attentions, suffix.position_of(Role.USER_EMB), keys, len(names))


@torch.no_grad()
def uncached_attention(
    model: QAnchorModel,
    batch: dict[str, Any],
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    prompt: torch.Tensor | None,
    names: list[str],
) -> torch.Tensor:
    """The same masses from one forward of the whole sequence (no cache): the reference."""
    pieces = model.prefix_pieces(batch) + model.suffix_pieces(query_ids, query_mask, prompt)
    packed = pack(pieces)
    out = bb.decoder_of(model.backbone)(inputs_embeds=packed.embeds, attention_mask=packed.attention_mask,
                                        use_cache=False, output_attentions=True)  # fmt: skip
    return group_masses(
        out.attentions, packed.position_of(Role.USER_EMB), pack_labels(pieces, names), len(names)
    )


def suffix_groups(role: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Group indices of suffix slots (prompt, query, <USER_EMB>; -1 on padding)."""
    out = torch.full_like(role, -1)
    for r, name in ((Role.PROMPT, "prompt"), (Role.QUERY, "query"), (Role.USER_EMB, SELF)):
        out = torch.where(role == int(r), names.index(name), out)
    return out


def group_names(model: QAnchorModel) -> list[str]:
    """Every group a prefix or suffix slot can belong to, in table order."""
    tokens = list(model.user_encoder.token_names)
    return [*tokens, "user", *(["counts"] if model.config.count_token else []), "prompt", "query", SELF]


def carve_users(data: Path, scenario: str, seed: int, fraction: float) -> set[str]:
    """The users of ``scenario``'s validation carve (see ``qanchor_pl.eval.evaluate.split_benchmark``)."""
    from qanchor_pl.eval.evaluate import benchmark, split_benchmark

    bench = split_benchmark(benchmark(data, scenario), "validation", seed, fraction)
    return set(bench.filter(pl.col("split") == "test")["user_id"].to_list())


def run_attention(cfg: AttentionConfig) -> dict[str, Any]:
    """``qanchor analyze attention``: the masses, the tables, the heatmap (see module docstring)."""
    from data_modules.loading.datamodule import UserStreamLoader, UserUDataModule
    from qanchor_pl.model.load import check_model_fits_data, load_model
    from qanchor_pl.serve.embed import scenario_queries

    data, out = Path(cfg.data), Path(cfg.out)
    model = load_model(cfg.model).eval()
    sides = {"base": scenario_queries(model, data, cfg.scenarios, None)}
    if cfg.prompts:
        sides["tuned"] = scenario_queries(model, data, cfg.scenarios, cfg.prompts)
    names = group_names(model)
    wanted = {q.name: carve_users(data, q.name, cfg.val_seed, cfg.val_fraction) for q in sides["base"]}
    everyone = set().union(*wanted.values())
    tokenizer = (
        str(Path(cfg.model) / "tokenizer") if Path(cfg.model).is_dir() else model.config.inputs.tokenizer
    )
    users = UserUDataModule(str(data), tokenizer=tokenizer, batch_size=cfg.batch_size, num_workers=0)
    check_model_fits_data(model, users.model_inputs(), data)
    sums = {
        (side, q.name): torch.zeros(model_layers(model), len(names)) for side, qs in sides.items() for q in qs
    }
    counts = dict.fromkeys(wanted, 0)
    with eager_attention(model):
        for batch in UserStreamLoader(users.profile_dataset(), num_workers=0):
            rows = [i for i, u in enumerate(batch["user_id"]) if u in everyone]
            if not rows:
                continue
            batch = batch_rows(
                batch, rows, len(batch["user_id"])
            )  # only the carve's users go through the model
            ids = list(batch["user_id"])
            prefix = encode_prefix(model, batch, groups=names)
            for side, queries in sides.items():
                for q in queries:
                    keep = torch.tensor([u in wanted[q.name] for u in ids])
                    if not bool(keep.any()):
                        continue
                    qids = torch.tensor(q.ids, dtype=torch.long).expand(len(ids), -1)
                    masses = cached_attention(
                        model, prefix, qids, torch.ones_like(qids, dtype=torch.bool), q.prompt, names
                    )
                    sums[side, q.name] += masses[keep].sum(0)
                    if side == "base":
                        counts[q.name] += int(keep.sum())
    result = _summarise(sums, counts, names, list(sides))
    _write(out, result, names, list(sides))
    return {"out": str(out), "scenarios": list(counts), "users": counts, "groups": names}


def model_layers(model: QAnchorModel) -> int:
    return bb.base_causal_lm(model.backbone).config.num_hidden_layers


def _summarise(sums: dict, counts: dict, names: list[str], sides: list[str]) -> dict[str, Any]:
    scenarios = {}
    for name, n in counts.items():
        entry: dict[str, Any] = {"users": n}
        for side in sides:
            per_layer = (sums[side, name] / max(n, 1)).numpy()
            overall = dict(zip(names, per_layer.mean(0).tolist()))
            inputs = {g: m for g, m in overall.items() if g not in NOT_INPUTS}
            total = sum(inputs.values()) or 1.0
            entry[side] = {"overall": overall, "input_share": {g: m / total for g, m in inputs.items()},
                           "per_layer": [dict(zip(names, layer.tolist())) for layer in per_layer]}  # fmt: skip
        if "tuned" in sides:
            entry["difference"] = {
                g: entry["tuned"]["overall"][g] - entry["base"]["overall"][g] for g in names
            }
            entry["share_difference"] = {g: entry["tuned"]["input_share"][g] - entry["base"]["input_share"][g]
                                         for g in entry["base"]["input_share"]}  # fmt: skip
        scenarios[name] = entry
    return {"groups": names, "sides": sides, "scenarios": scenarios}


def _matrix(result: dict, key: str, groups: list[str]) -> np.ndarray:
    rows = []
    for entry in result["scenarios"].values():
        cell = entry[key] if key.endswith("difference") else entry[key]["overall"]
        rows.append([cell[g] for g in groups])
    return np.array(rows)


def input_groups(result: dict) -> list[str]:
    return [g for g in result["groups"] if g not in NOT_INPUTS]


def markdown(result: dict) -> str:
    """The overall masses per scenario: base, and tuned with its difference when given."""
    groups = result["groups"]
    lines = ["**Attention of `<USER_EMB>` by input group** (mean over layers and heads, validation carve;",
             "base = the query alone" + (", tuned = soft prompt + query; Δ = tuned - base)" if "tuned" in result["sides"] else ")"),
             "", "| Scenario | side | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]  # fmt: skip
    for name, entry in result["scenarios"].items():
        for side in result["sides"]:
            cells = " | ".join(f"{entry[side]['overall'][g]:.3f}" for g in groups)
            lines.append(f"| {name} | {side} | {cells} |")
        if "difference" in entry:
            cells = " | ".join(f"{entry['difference'][g]:+.3f}" for g in groups)
            lines.append(f"| {name} | Δ | {cells} |")
    if "tuned" not in result["sides"]:
        return "\n".join(lines) + "\n"
    inputs = input_groups(result)
    lines += ["", "**Which of the user's inputs tuning moves attention to** (each group's share of the mass on",
              "the user's inputs, prompt, query and <USER_EMB> left out; Δ share = tuned - base)", "",
              "| Scenario | " + " | ".join(inputs) + " |", "|---|" + "---|" * len(inputs)]  # fmt: skip
    for name, entry in result["scenarios"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{entry['share_difference'][g]:+.3f}" for g in inputs) + " |"
        )
    return "\n".join(lines) + "\n"


def heatmap_png(result: dict, path: Path) -> np.ndarray:
    """Scenarios x groups: base | tuned | tuned - base (or base alone); returns the RGB array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data_modules.util.atomic import atomic_path
    from qanchor_pl.eval.plots import png_to_array

    groups, inputs = result["groups"], input_groups(result)
    panels = [("base", _matrix(result, "base", groups), groups)]
    if "tuned" in result["sides"]:
        panels += [("tuned", _matrix(result, "tuned", groups), groups),
                   ("tuned - base: share of the user's inputs", _matrix(result, "share_difference", inputs), inputs)]  # fmt: skip
    scenarios = list(result["scenarios"])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(scenarios) + 2.2), squeeze=False
    )
    top = max(float(m.max()) for title, m, _ in panels if not title.startswith("tuned - base"))
    for ax, (title, m, columns) in zip(axes[0], panels):
        diff = title.startswith("tuned - base")
        bound = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, cmap="RdBu_r" if diff else "viridis", vmin=-bound if diff else 0.0, vmax=bound if diff else top,
                       aspect="auto")  # fmt: skip
        ax.set_title(title)
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(
            range(len(scenarios)), scenarios if ax is axes[0][0] else [""] * len(scenarios), fontsize=8
        )
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Attention of <USER_EMB> by input group (validation carve)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return png_to_array(path)


def _write(out: Path, result: dict, names: list[str], sides: list[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from data_modules.util.atomic import atomic_path, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attention.json", result)
    with atomic_path(out / "attention.md") as tmp:
        tmp.write_text(markdown(result))
    image = heatmap_png(result, out / "attention.png")
    writer = SummaryWriter(str(out / "tensorboard"))
    writer.add_image("attention/heatmap", image, 0, dataformats="HWC")
    for scenario, entry in result["scenarios"].items():
        for side in sides:
            for g in names:
                writer.add_scalar(f"attention/{side}/{scenario}/{g}", entry[side]["overall"][g], 0)
    writer.close()
