"""``qanchor bench qa-synth``: LLM answer generation speed (users/s, generated tokens/s), nothing written.

Without ``--data``/``--model`` it measures a small synthetic data set with a tiny random Qwen2 made
on the spot (the CPU figure); pass a real model folder, on a GPU, for the production figure.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def bench_qa_synth(
    *, data: str | None, model: str | None, users: int, batch_size: int, max_new_tokens: int, device: str
) -> dict:
    import torch

    from data_modules.contract.topics import load_topics
    from data_modules.dataset.manifest import Manifest
    from data_modules.supervision.qa_synth import (
        Generator,
        QASynthConfig,
        build_prompts,
        iter_users,
        known_categories,
        model_folder,
        resolve_device,
        synth_chunk,
        vocab_texts,
    )

    with tempfile.TemporaryDirectory(prefix="qanchor-bench-") as tmp:
        if data is None:
            from data_modules.builder.runner import BuildConfig, build
            from data_modules.synth.world import write_world

            write_world(Path(tmp) / "raw", n_users=max(users, 64), seed=0)
            build(BuildConfig(raw=str(Path(tmp) / "raw"), out=str(Path(tmp) / "data"), tokenizer_vocab=1024))
            data = str(Path(tmp) / "data")
        if model is None:
            from qanchor_pl.model.backbone import write_shaped_backbone

            write_shaped_backbone("tiny", data, Path(tmp) / "model")
            model = str(Path(tmp) / "model")
        cfg = QASynthConfig(data=data, model=model, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            device=device, chunk_users=users)  # fmt: skip
        root, manifest = Path(data), Manifest.load(data)
        topics = {t.name: t for t in load_topics(root / "topics.json", manifest.event_modalities)}
        vocab = vocab_texts(root, manifest.event_modalities)
        rows = [u for _, u in zip(range(users), iter_users(root, manifest))]
        prompts = [p for u in rows for p in build_prompts(u, topics, vocab, manifest, cfg)]
        dev = resolve_device(cfg, 0)
        gen = Generator(model_folder(model), cfg, dev)
        known = known_categories(root, manifest)
        synth_chunk(prompts[: cfg.batch_size], gen, None, known, cfg, chunk=0)  # warm-up
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, counts, tokens = synth_chunk(prompts, gen, None, known, cfg, chunk=0)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {
        "device": dev if not dev.startswith("cuda") else torch.cuda.get_device_name(),
        "model": "tiny random Qwen2 (made here)" if model.startswith(tempfile.gettempdir()) else model,
        "params": sum(p.numel() for p in gen.model.parameters()),
        "users": len(rows),
        "prompts": len(prompts),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "seconds": round(seconds, 2),
        "users_per_s": round(len(rows) / seconds, 3),
        "prompts_per_s": round(len(prompts) / seconds, 3),
        "generated_tokens_per_s": round(tokens / seconds, 1),
        "kept": counts.get("kept", 0),
        "threads": torch.get_num_threads(),
    }
