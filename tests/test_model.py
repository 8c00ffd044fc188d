"""The Q-Anchor model on real batches from a built data set: layout, towers, NTP, LoRA, ablations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from data_modules.dataset.manifest import Manifest
from qanchor_pl.model import backbone as bb
from qanchor_pl.model.config import LoraSpec, ModelSpec
from qanchor_pl.model.qanchor import QAnchorModel
from qanchor_pl.model.sequence import Role
from qanchor_pl.train.pretrain import PretrainModule
from tests.helpers.tiny import TINY, model_for

SMALL_ARCH = ModelSpec(tiny=TINY, lora=None, head_hidden=32, embed_dim=16)


def take(batch, rows):
    """The sub-batch of ``rows`` (lists, tensors and per-modality dicts alike)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {m: t[rows] for m, t in v.items()}
        elif torch.is_tensor(v):
            out[k] = v[rows]
        else:
            out[k] = [v[i] for i in rows]
    return out


def test_an_embedding_does_not_depend_on_the_rest_of_the_batch(model_data):
    inputs, batch = model_data
    m = model_for(inputs)
    with torch.no_grad():
        together = m.anchor(batch)
        alone = torch.cat([m.anchor(take(batch, [i])) for i in range(len(batch["user_id"]))])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(len(together)), atol=1e-5)


def test_the_anchor_is_blind_to_the_answer_that_follows_it(model_data):
    inputs, batch = model_data
    m = model_for(inputs)
    with torch.no_grad():
        joint = m(batch, semantic=True, ntp=True)
        alone = m.anchor(batch)
    assert torch.allclose(joint.u, alone, atol=1e-5)
    assert joint.v.shape == joint.u.shape and joint.ntp_loss is not None


def test_layout_prefix_query_user_emb_answer(model_data):
    inputs, batch = model_data
    m = model_for(inputs)
    packed = m.anchor_sequence(batch, with_answer=True)
    n_events = sum(int(batch["event_mask"][mod][0].sum()) for mod in inputs.modalities)
    n_tokens = len(inputs.modalities) + (1 if inputs.tabular_dim else 0)  # modality tokens
    prefix = 2 + 3 * n_tokens + n_events  # <USER> z_usr, then per modality: <m> z_m events </m>
    roles = packed.role[0].tolist()
    q_len, a_len = int(batch["query_mask"][0].sum()), int(batch["answer_mask"][0].sum())
    assert roles[:prefix] == [Role.PREFIX] * prefix
    assert roles[prefix : prefix + q_len] == [Role.QUERY] * q_len
    assert roles[prefix + q_len] == Role.USER_EMB
    assert roles[prefix + 1 + q_len : prefix + 1 + q_len + a_len] == [Role.ANSWER] * a_len
    assert int(packed.attention_mask[0].sum()) == prefix + 1 + q_len + a_len


def test_ablating_structural_tokens_shortens_the_prefix(model_data):
    inputs, batch = model_data
    full = model_for(inputs).anchor_sequence(batch)
    bare = model_for(inputs, user_marker=False, modality_markers=False).anchor_sequence(batch)
    n_tokens = len(inputs.modalities) + (1 if inputs.tabular_dim else 0)
    assert (full.lengths - bare.lengths).tolist() == [1 + 2 * n_tokens] * len(batch["user_id"])


def test_ntp_loss_equals_full_vocabulary_cross_entropy(model_data):
    """The LM head applied only at answer-predicting slots gives the standard causal LM loss."""
    inputs, batch = model_data
    m = model_for(inputs)
    with torch.no_grad():
        packed = m.anchor_sequence(batch, with_answer=True)
        ours = m.answer_ntp_loss(m.hidden_states(packed), packed)
        labels = torch.where(packed.role == int(Role.ANSWER), packed.token_ids, -100)
        lm = bb.base_causal_lm(m.backbone)
        ref = lm(inputs_embeds=packed.embeds, attention_mask=packed.attention_mask, labels=labels).loss
    assert torch.allclose(ours, ref, atol=1e-5)


def test_semantic_tower_reads_the_last_real_token(model_data):
    inputs, batch = model_data
    m = model_for(inputs)
    with torch.no_grad():
        v = m.embed_texts(batch["answer_ids"], batch["answer_mask"])
        i = int(batch["answer_mask"].sum(1).argmin())  # the shortest answer, padded in the batch
        n = int(batch["answer_mask"][i].sum())
        alone = m.embed_texts(batch["answer_ids"][i : i + 1, :n], batch["answer_mask"][i : i + 1, :n])
    assert torch.allclose(v[i], alone[0], atol=1e-5)


def test_lora_freezes_the_base_and_keeps_special_tokens_trainable(model_data):
    inputs, batch = model_data
    m = model_for(inputs, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "special.weight" in trainable
    assert any("lora_A" in n for n in trainable) and any(n.startswith("user_encoder.") for n in trainable)
    assert not any("embed_tokens" in n or ("q_proj.base_layer" in n) for n in trainable)
    out = m.train()(batch)
    (out.u.sum() + out.ntp_loss).backward()
    assert m.special.weight.grad is not None and m.special.weight.grad.abs().sum() > 0
    base = sum(p.numel() for n, p in m.named_parameters() if not p.requires_grad)
    kept = sum(t.numel() for t in m.trainable_state_dict().values())
    assert kept < base


def test_the_tiny_backbone_is_rebuilt_bit_identically(model_data):
    inputs, _ = model_data
    a = model_for(inputs, lora=LoraSpec(r=4, alpha=8)).backbone.state_dict()
    torch.manual_seed(99)  # the global RNG must not matter
    b = model_for(inputs, lora=LoraSpec(r=4, alpha=8)).backbone.state_dict()
    frozen = [k for k in a if "lora_" not in k]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)


def test_ablation_switches_skip_the_work_they_remove(model_data):
    inputs, batch = model_data
    m = model_for(inputs)
    out = m(batch, semantic=False, ntp=False)
    assert out.v is None and out.ntp_loss is None and out.answer_tokens == 0
    with pytest.raises(ValueError, match="every loss is off"):
        PretrainModule(contrastive={"enabled": False}, ntp_weight=0.0, inputs=inputs)


def test_a_small_batch_is_overfit(model_data):
    """Pretraining loss on one fixed batch falls far below its start (contrastive + NTP)."""
    inputs, batch = model_data
    torch.manual_seed(0)
    module = PretrainModule(
        arch=SMALL_ARCH, inputs=inputs,
        contrastive={"margin_warmup_steps": 0, "margin": None},
    )  # fmt: skip
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        loss, scalars, _ = module.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or {k: float(v) for k, v in scalars.items()}
    last = {k: float(v) for k, v in scalars.items()}
    assert last["train/loss_cl"] < 0.25 * first["train/loss_cl"], (first, last)
    assert last["train/loss_ntp"] < 0.6 * first["train/loss_ntp"], (first, last)
    assert last["train/pos_sim"] > last["train/neg_sim"] + 0.3


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model_data):
    inputs, batch = model_data
    grads = []
    for ckpt in (False, True):
        m = model_for(inputs, gradient_checkpointing=ckpt).train()
        out = m(batch)
        (out.u.sum() + out.v.sum() + out.ntp_loss).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_structural_tokens_start_at_the_token_tables_scale(model_data):
    inputs, _ = model_data
    m = model_for(inputs)
    table = m.token_embedding.weight.detach()
    special = m.special.weight.detach()
    # Drawn per dimension from the table's mean and s.d.: the overall scale matches (a fixed 0.02
    # was ~4x too small), within the sampling noise of a few rows.
    assert abs(special.std().item() / table.std().item() - 1) < 0.25
    assert special.std().item() > 2 * 0.02


def test_without_the_contrastive_loss_the_embedding_is_the_trained_hidden_state(model_data):
    inputs, batch = model_data
    off = PretrainModule(arch=SMALL_ARCH, inputs=inputs,
                         contrastive={"enabled": False})  # fmt: skip
    on = PretrainModule(arch=SMALL_ARCH, inputs=inputs)
    assert off.model.config.embedding == "hidden" and on.model.config.embedding == "head"
    with torch.no_grad():
        u = off.model.eval().anchor(batch)
    # The head is skipped: u is the normalised <USER_EMB> hidden state, at the backbone's width.
    assert u.shape == (len(batch["user_id"]), TINY.hidden_size) == (u.shape[0], off.model.embedding_dim)
    assert torch.allclose(u.norm(dim=-1), torch.ones(len(u)), atol=1e-5)
    with pytest.raises(ValueError, match="embedding must be"):
        model_for(inputs, embedding="pooled")


def test_the_residual_path_starts_closed_and_carries_the_event_summary(model_data):
    inputs, batch = model_data
    plain, residual = model_for(inputs), model_for(inputs, head_residual=True)
    with torch.no_grad():
        assert torch.allclose(plain.anchor(batch), residual.anchor(batch), atol=1e-6)  # zero init
        torch.nn.init.normal_(residual.residual.weight, std=0.5)
        assert not torch.allclose(plain.anchor(batch), residual.anchor(batch), atol=1e-3)
    residual.train()
    out = residual(batch, semantic=False)
    out.u.sum().backward()
    assert residual.residual.weight.grad.abs().sum() > 0


def test_event_ages_in_the_batch_are_days_before_the_cutoff_of_the_kept_events(built, model_data):
    _, batch = model_data
    manifest = Manifest.load(built)
    shards = pl.concat([pl.read_parquet(built / n) for n in manifest.shard_files])
    cutoff = np.datetime64(manifest.cutoff.split("+")[0], "ms")
    for i, user in enumerate(batch["user_id"]):
        row = shards.filter(pl.col("user_id") == user).row(0, named=True)
        for m in manifest.event_modalities:
            ts = np.asarray(row[f"ts_{m}"] or [], dtype="datetime64[ms]")[-manifest.max_events[m] :]
            mask = batch["event_mask"][m][i]
            got = batch["event_age"][m][i][mask].numpy()
            assert np.allclose(got, (cutoff - ts) / np.timedelta64(1, "D"), atol=1e-4), (user, m)
            assert (got >= 0).all()


def opened_switch(inputs, batch, switch: str, layer: str) -> tuple[QAnchorModel, QAnchorModel]:
    """(plain model, model with ``switch`` on): equal embeddings at init (the switch's embedding
    starts closed); then the switch's last layer (``user_encoder.<layer>``) is opened at random.
    Call under ``torch.no_grad()``."""
    plain, switched = model_for(inputs), model_for(inputs, **{switch: True})
    assert torch.allclose(plain.anchor(batch), switched.anchor(batch), atol=1e-6)  # zero init
    torch.nn.init.normal_(getattr(switched.user_encoder, layer)[2].weight, std=0.5)
    return plain, switched


def test_event_time_embedding_starts_closed_and_changes_embeddings_by_age(model_data):
    inputs, batch = model_data
    with torch.no_grad():
        plain, timed = opened_switch(inputs, batch, "event_time", "time_embedding")
        older = {**batch, "event_age": {m: a + 30.0 for m, a in batch["event_age"].items()}}
        assert not torch.allclose(timed.anchor(batch), timed.anchor(older), atol=1e-3)
        assert torch.allclose(plain.anchor(batch), plain.anchor(older))  # the plain model ignores time
        no_age = {k: v for k, v in batch.items() if k != "event_age"}
        with pytest.raises(KeyError, match="event_age"):
            timed.anchor(no_age)


def test_event_count_embedding_starts_closed_and_sees_what_the_mean_pooling_cannot(model_data):
    inputs, batch = model_data
    with torch.no_grad():
        plain, counted = opened_switch(inputs, batch, "event_counts", "count_embedding")
        # every event twice: the same masked mean, so the same plain modality tokens; twice the count
        twice = {k: {m: torch.cat([v, v], 1) for m, v in batch[k].items()} for k in ("events", "event_mask")}
        for model, changes in ((plain, False), (counted, True)):
            a = model.user_encoder(batch["events"], batch["event_mask"], batch.get("tabular"))
            b = model.user_encoder(twice["events"], twice["event_mask"], batch.get("tabular"))
            moved = [not torch.allclose(a.modality[m], b.modality[m], atol=1e-4)
                     for m in model.user_encoder.modalities if batch["event_mask"][m].any()]  # fmt: skip
            assert moved and all(x == changes for x in moved)
