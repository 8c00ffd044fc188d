"""Typed configs of the model-side commands, declared once.

Each dataclass is what one ``qanchor`` command can be told: the CLI builds its options (and their
``--help``) from the fields and their docstrings, recipes are YAML files of the same keys, and the
pipelines and tests build the same objects in Python. The data-side commands keep theirs beside
their code (:class:`data_modules.synth.world.SynthConfig`, :class:`data_modules.builder.runner.BuildConfig`,
:class:`data_modules.encode.dataset.EncodeConfig`, :class:`data_modules.supervision.qa_synth.QASynthConfig`,
:class:`data_modules.loading.bench.BenchDataConfig`), since data never imports the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EmbedConfig:
    """Every user's embedding for every scenario, the shared prefix computed once (KV cache)."""

    model: str
    """an export folder or a pretraining checkpoint"""
    data: str
    """a built data set"""
    out: str
    """output folder (resumable parts)"""
    scenarios: str = "all"
    """'all' or a comma-separated list of scenario names"""
    prompts: str | None = None
    """folder of tuned prompts (<DIR>/<scenario>/prompt/, from qanchor tune)"""
    kv_cache: bool = True
    """false: run each (user, scenario) in full (the reference the cache is checked against)"""
    batch_size: int = 64
    """users per batch"""
    part_batches: int = 16
    """batches per output part"""
    devices: int = 1
    """processes per node (DDP predict), one part set each"""
    num_nodes: int = 1
    """nodes (slurm/embed.sbatch passes the allocation's): rank r of all devices x nodes embeds the
    same user slice on any layout, so 2 nodes x 1 give 1 node x 2's parts"""
    accelerator: str = "auto"
    """cpu | gpu | auto"""
    num_workers: int = 0
    """data loader workers per process"""


@dataclass
class EvaluateConfig:
    """A linear probe per scenario and row: AUC, KS, the report table, TensorBoard."""

    data: str
    """a built data set (its benchmarks are the labels)"""
    out: str
    """report folder"""
    embeddings: list[str] = field(default_factory=list)
    """qanchor embed output folders, one row each, e.g. [runs/a, runs/b]"""
    names: list[str] | None = None
    """row names for the embeddings (default: their folder names)"""
    baselines: str = "minilm,mean-events,event-counts"
    """comma-separated from minilm, mean-events, category-counts, event-counts, time-windows; or 'none'"""
    scenarios: str = "all"
    """'all' or a comma-separated list of scenario names"""
    projector_users: int = 500
    """users in the TensorBoard embedding projector"""
    profile_tokens: int = 256
    """MiniLM token cap on the profile text"""
    compare: list[tuple[str, str]] = field(default_factory=list)
    """row pairs [[A, B], ...]: paired-bootstrap 95 % interval of Avg AUC(A) - AUC(B)"""
    n_boot: int = 1000
    """bootstrap resamples"""
    probe_c: float | Literal["cv"] = 1.0
    """the probe's C, or 'cv' (3-fold cross-validation on train, per row and scenario)"""
    split: Literal["test", "validation"] = "test"
    """test: fit on train, score on test; validation: fit and score inside train (the tuning carve)"""
    val_seed: int = 0
    """the validation carve's seed (as the tuning data's)"""
    minilm_cache: str | None = None
    """folder caching the MiniLM profile vectors between runs (default: the report folder)"""
    complement: str | None = None
    """a baseline (e.g. category-counts): every embedding row also gets a row of that baseline's
    features and the embedding side by side, "[BASELINE ; ROW]", compared with the baseline alone
    (does the embedding add to what an engineer already has?)"""
    label_fractions: list[float] = field(default_factory=list)
    """label efficiency: also fit every row's probe on these fractions of the train users, e.g.
    [0.02, 0.05, 0.1, 0.25] (a table, label_efficiency.png and a TensorBoard image)"""
    label_draws: int = 3
    """draws per fraction (the same draws for every row)"""
    feature_cache: str | None = None
    """folder caching the baselines' features between evaluations of the same users (keyed by
    the data's non-benchmark files: valid across splits, seeds and validation/test)"""


@dataclass
class DiagnoseConfig:
    """Validation AUC of a linear probe at every stage of the model."""

    model: str
    """an export folder or a pretraining checkpoint"""
    data: str
    """a built data set"""
    out: str
    """report folder (diagnose.md, diagnose.json, tensorboard/)"""
    prompts: str | None = None
    """tuned prompts folder: adds the prompt-tuned u stage"""
    scenarios: str = "all"
    """'all' or a comma-separated list of scenario names"""
    batch_size: int = 128
    """users per forward pass"""
    val_fraction: float = 0.2
    """of each scenario's train users"""
    seed: int = 0
    """the validation carve's seed (as the tuning data's)"""
    probe_c: float | Literal["cv"] = "cv"
    """the probe's C, or 'cv' (cross-validated on the fit part)"""


@dataclass
class ExportConfig:
    """A checkpoint as a folder usable without Lightning (peft adapter, safetensors, model card)."""

    ckpt: str
    """a pretraining checkpoint (e.g. RUN/checkpoints/last.ckpt)"""
    out: str
    """the export folder"""
    overwrite: bool = False
    """replace an existing export folder"""


@dataclass
class MakeBackboneConfig:
    """A random-weight causal LM with a published shape, for offline speed and memory checks."""

    tokenizer: str
    """a data set folder or tokenizer folder to ship with it"""
    out: str
    """the model folder"""
    shape: str = "qwen2.5-0.5b"
    """qwen2.5-0.5b | qwen2.5-1.5b | qwen2.5-3b | tiny"""
    seed: int = 0
    """weight initialisation seed"""


@dataclass
class BenchTrainConfig:
    """One pretraining recipe's step under Lightning and in a plain PyTorch loop."""

    recipe: list[str]
    """the pretraining recipe(s), composed in order (package names like pretrain/tiny-cpu, or files)"""
    overrides: dict[str, object] = field(default_factory=dict)
    """dotted recipe overrides, e.g. {data.data: DATA, trainer.devices: 1}"""
    steps: int = 30
    """timed steps per block"""
    warmup: int = 5
    """untimed steps before the first block"""
    blocks: int = 3
    """blocks per side, alternated (plain, Lightning, plain, ...): medians and spread"""
    grad_cache: int | None = None
    """also time the Lightning step with model.grad_cache.chunk_size N (samples/s, peak memory)"""


@dataclass
class BenchKVConfig:
    """Multi-scenario embedding with against without the prefix KV cache."""

    users: int = 8
    """users per batch"""
    scenarios: int = 10
    """scenarios per user"""
    query_len: int = 20
    """query tokens per scenario"""
    hidden: int = 256
    """backbone width"""
    layers: int = 4
    """backbone layers"""
    intermediate: int = 1408
    """MLP width"""
    repeats: int = 3
    """timed repeats (the median is reported)"""
    heads: int = 4
    """attention heads"""
    kv_heads: int = 2
    """key/value heads"""
    device: str = "cpu"
    """cpu | cuda"""
    dtype: str = "float32"
    """float32 | bfloat16"""


@dataclass
class BenchQASynthConfig:
    """LLM answer generation: users/s and generated tokens/s."""

    data: str | None = None
    """a built data set (default: a small synthetic one, built in a temp folder)"""
    model: str | None = None
    """a causal LM folder (default: a tiny random Qwen2 made here)"""
    users: int = 32
    """users to generate for"""
    batch_size: int = 16
    """prompts per generate() call"""
    max_new_tokens: int = 64
    """answer length cap"""
    device: str = "auto"
    """cpu | cuda | auto"""


@dataclass
class AttentionConfig:
    """Where the model, data and tuned prompts are, and which users and scenarios to read."""

    model: str
    """an exported model folder (``qanchor export``)"""
    data: str
    """the built, encoded data set"""
    out: str
    """the output folder"""
    prompts: str | None = None
    """a prompt-tuning folder (``<scenario>/prompt``): the tuned side; without it, base only"""
    scenarios: str = "all"
    """comma-separated scenario names, or all"""
    batch_size: int = 256
    """users read per step (only the validation carve's go through the model)"""
    val_seed: int = 0
    """the validation carve's seed (the tuning's)"""
    val_fraction: float = 0.2
    """the validation carve's share of the train users"""


@dataclass
class BenchGPUConfig:
    """Where to write, and whether this is the CPU dry run."""

    out: str = "runs/gpu-check"
    """the working folder; the result is OUT/gpu-check.json"""
    dry_run: bool = False
    """on the CPU at toy sizes (the test suite's run of this script)"""
    users: int = 512
    """synthetic users of the training data (paper caps)"""
    steps: int = 10
    """timed training steps per block"""
