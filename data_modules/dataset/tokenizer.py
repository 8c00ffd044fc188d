"""The offline tokenizer for the small built-in backbone.

``build`` trains a byte-level BPE on the data set's own QA texts and scenario queries with the
``tokenizers`` library. Why not the packaged MiniLM tokenizer: it is uncased WordPiece with a
30,522-entry vocabulary, so the tiny model's embedding and LM head would dwarf its transformer and
answers would lose case; a 4k byte-level BPE fits the domain, handles any language or symbol a
user's logs contain, and is deterministic. Real backbones bring their own tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from data_modules.util.atomic import write_json

TOKENIZER_DIR = "tokenizer"
PAD, EOS = "<|pad|>", "<|endoftext|>"


def _texts(root: Path, shard_names: Iterable[str], extra: list[str], max_users: int | None) -> Iterator[str]:
    """The scenario queries, then the QA texts of the first ``max_users`` users (all when None)."""
    yield from extra
    left = max_users if max_users else None
    for name in shard_names:
        if not name.startswith("shards/"):
            continue
        pf = pq.ParquetFile(root / name)
        for rg in range(pf.num_row_groups):
            if left is not None and left <= 0:
                return
            t = pf.read_row_group(rg, columns=["qa_query", "qa_answer"])
            if left is not None:
                t = t.slice(0, left)
                left -= t.num_rows
            for col in ("qa_query", "qa_answer"):
                for items in t.column(col).to_pylist():
                    yield from items


def train_tokenizer(
    root: str | Path,
    shard_names: Iterable[str],
    vocab_size: int,
    extra_texts: list[str],
    max_users: int | None = None,
) -> Path:
    """Train and save a byte-level BPE under ``root/tokenizer`` on the QA texts of the first
    ``max_users`` users of ``shard_names`` (in that order; all when None); returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(root)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(root, shard_names, extra_texts, max_users), trainer=trainer)
    out = root / TOKENIZER_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tokenizer.json.tmp"
    tok.save(str(tmp))
    tmp.replace(out / "tokenizer.json")
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": PAD,
            "eos_token": EOS,
            "model_max_length": 4096,
            "clean_up_tokenization_spaces": False,
        },
    )
    return out


def load_tokenizer(name_or_path: str | Path):
    """A Hugging Face tokenizer: a data set's trained one (DATA or DATA/tokenizer), ``minilm``, or any folder."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name_or_path)
    if str(name_or_path) == "minilm":
        from data_modules.encode.encoders import minilm_path

        return AutoTokenizer.from_pretrained(minilm_path())
    if (path / TOKENIZER_DIR / "tokenizer.json").exists():
        path = path / TOKENIZER_DIR
    if (path / "tokenizer.json").exists() and not (path / "config.json").exists():
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path / "tokenizer.json"), pad_token=PAD, eos_token=EOS
        )
    return AutoTokenizer.from_pretrained(path)
