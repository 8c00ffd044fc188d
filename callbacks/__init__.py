"""Lightning callbacks: they read what the LightningModules publish and log or record it."""

from callbacks.epoch_end_resume import EpochEndResume
from callbacks.hparams import HParamsWithMetrics
from callbacks.preemption import SlurmPreemption
from callbacks.sample_audit import SampleAuditLog
from callbacks.step_log import StepLog
from callbacks.throughput import ThroughputLogger

__all__ = [
    "EpochEndResume",
    "HParamsWithMetrics",
    "SampleAuditLog",
    "SlurmPreemption",
    "StepLog",
    "ThroughputLogger",
]
