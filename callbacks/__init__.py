"""Lightning callbacks: they read what the LightningModules publish and log or record it."""

from callbacks.preemption import SlurmPreemption
from callbacks.sample_audit import SampleAuditLog
from callbacks.throughput import ThroughputLogger

__all__ = ["SampleAuditLog", "SlurmPreemption", "ThroughputLogger"]
