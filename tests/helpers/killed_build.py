"""``python -m tests.helpers.killed_build RAW OUT``: a build SIGKILLed after its shards are written
(the benchmarks and the manifest are not): a real kill, at a known step."""

from __future__ import annotations

import os
import signal
import sys

from data_modules.builder import finish
from data_modules.builder.runner import BuildConfig, build


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    finish._write_benchmarks = _die
    build(BuildConfig(raw=sys.argv[1], out=sys.argv[2], users_per_shard=100, row_group_size=32,
                      tokenizer_vocab=1024, min_class_users=0, split_seed=int(sys.argv[3])))  # fmt: skip
