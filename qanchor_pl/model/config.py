"""Plain, serialisable settings of the Q-Anchor model (they go into checkpoints and export folders)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


POOLINGS = ("mean", "pna")


@dataclass(frozen=True)
class TinyBackbone:
    """Shape of the small random Qwen2 built when ``backbone: tiny`` (CPU demos and tests).

    ``seed`` fixes its random weights, so a frozen tiny base is rebuilt bit-identically on resume
    and export without being stored in checkpoints."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 4096
    seed: int = 1234
    # Weight init std; None = 1/sqrt(hidden_size). Qwen's 0.02 suits 896+ wide models; at width
    # 64-128 it leaves attention nearly uniform, every user's <USER_EMB> state nearly the same
    # (cosine ~0.996) and the contrastive loss collapsing to one point before it can separate users.
    init_std: float | None = None


@dataclass(frozen=True)
class LoraSpec:
    """peft LoRA on the backbone (the paper's production setting by default)."""

    r: int = 64
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


@dataclass(frozen=True)
class DataInputs:
    """What the model needs to know about the data set: filled in from the DataModule by the CLI."""

    tokenizer: str  # folder or hub id of the tokenizer the data is tokenised with
    modalities: tuple[str, ...]  # event modalities, in prefix order
    event_dims: dict[str, int] = field(default_factory=dict)  # text-encoder size per modality
    tabular_dim: int = 0  # 0 = no tabular modality
    encoder: str = ""  # content hash of the text encoder that made the event vectors ("" = unknown)
    # event modality -> category names of the pretraining data (count token, future anchor)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # event modality -> mean log(1 + kept events) on the pretraining data (count-aware pooling)
    log_count_mean: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", {m: tuple(c) for m, c in (self.categories or {}).items()})
        object.__setattr__(self, "log_count_mean", dict(self.log_count_mean or {}))


@dataclass(frozen=True)
class ModelSpec:
    """The architecture of a Q-Anchor model, declared once: a pretraining recipe's ``model.arch``,
    and (with the data's :class:`DataInputs`) the :class:`QAnchorConfig` in checkpoints and exports."""

    backbone: str = "tiny"  # "tiny" or a local folder / hub id for AutoModelForCausalLM
    tiny: TinyBackbone = TinyBackbone()
    lora: LoraSpec | None = LoraSpec()
    backbone_dtype: str = "float32"  # weights dtype of a loaded backbone (mixed precision autocasts)
    embed_dim: int = 128
    head_hidden: int = 512
    adapter_hidden: int | None = None  # None = the backbone's hidden size
    user_marker: bool = True  # structural token before the user token (paper's "User token" ablation)
    modality_markers: bool = True  # start/end tokens around each modality ("modality tokens" ablation)
    gradient_checkpointing: bool = False
    # Which vector is the user embedding: "head" = the projection head's output (trained by the
    # contrastive loss); "hidden" = the L2-normalised <USER_EMB> hidden state itself (what training
    # defines when the contrastive loss is off and the head would stay at its random init).
    # None: "head", and for pretraining "hidden" when the contrastive loss is off.
    embedding: str | None = None
    # Add a learned map of the pooled modality tokens to the <USER_EMB> hidden state before the
    # head: a short path for the event statistics, which otherwise must survive every layer.
    head_residual: bool = False
    # Embed each event's age before the cutoff into its token (recency; see user_encoder.py).
    event_time: bool = False
    # Embed each modality's event count into its token (the mean pooling is blind to it).
    event_counts: bool = False
    # How a modality token pools its event tokens: "mean" (the paper's; blind to the count) or "pna"
    # (mean, mean x s and mean / s side by side, s = log(1+n) / delta: PNA's scalers, which survive
    # the adapter's LayerNorm because they change the blocks' relative size).
    pooling: str = "mean"
    # One more prefix token: a linear map of log(1 + count) per (modality, category) and modality.
    count_token: bool = False

    @classmethod
    def from_any(cls, value: Any) -> ModelSpec:
        """From itself, None (defaults) or a dict with nested ``tiny``/``lora`` dicts (checkpoints)."""
        if isinstance(value, ModelSpec):
            return value
        d = dict(value or {})
        if "tiny" in d:
            d["tiny"] = coerce(TinyBackbone, d["tiny"])
        if d.get("lora") is not None:
            d["lora"] = coerce(LoraSpec, d["lora"])
        return coerce(cls, d)

    def arch_fields(self) -> dict[str, Any]:
        """The spec's fields as they are (nested dataclasses kept)."""
        return {f.name: getattr(self, f.name) for f in fields(ModelSpec)}


@dataclass(frozen=True)
class QAnchorConfig(ModelSpec):
    """Everything needed to rebuild a :class:`~qanchor_pl.model.qanchor.QAnchorModel`: the
    architecture and what the model must know about the data."""

    inputs: DataInputs | None = None  # required; a default only because the parent's fields have one

    def __post_init__(self) -> None:
        if self.inputs is None:
            raise ValueError("QAnchorConfig needs inputs (DataInputs from the data set)")
        if self.embedding is None:
            object.__setattr__(self, "embedding", "head")
        if self.embedding not in ("head", "hidden"):
            raise ValueError(f"embedding must be 'head' or 'hidden', got {self.embedding!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"]["modalities"] = list(self.inputs.modalities)
        d["inputs"]["categories"] = {m: list(c) for m, c in self.inputs.categories.items()}
        if self.lora is not None:
            d["lora"]["target_modules"] = list(self.lora.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QAnchorConfig:
        d = dict(d)
        d["inputs"] = coerce(DataInputs, d["inputs"])
        d["tiny"] = coerce(TinyBackbone, d.get("tiny", {}))
        d["lora"] = coerce(LoraSpec, d["lora"]) if d.get("lora") is not None else None
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def coerce(cls: type[T], value: Any) -> T:
    """A dataclass from itself, a dict (e.g. read back from a checkpoint or JSON), or None -> defaults."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise TypeError(f"expected {cls.__name__} or a dict, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return cls(**kwargs)
