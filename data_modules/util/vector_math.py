"""Settle MKL's vector-math CPU dispatch in one thread, before ATen's threads can race for it.

PyTorch's CPU wheels compute ``cos``, ``sin``, ``exp``, ``log``, ``tanh``, ``erf``, ``sqrt`` ... of
contiguous float tensors with MKL's vector math (VML, ``vmsCos(n, x, y, VML_HA | ...)``), called from
inside ATen's own parallel loops. VML picks its kernel from a table indexed by CPU type and accuracy
mode; the CPU type is detected lazily on the first call (``mkl_vml_serv_cpu_detect``), and the
detector stores the *raw* CPU code in its shared variable before the mapped one (MKL 2024.2: raw 9,
mapped 5 on an AVX-512 machine). A thread that reads the variable between the two stores indexes the
table with the raw code, which lands one accuracy row further down: the enhanced-performance
kernel (``VML_EP``, about 11 correct bits) instead of the high-accuracy one asked for.

So when the first vector-math call of a process comes from two threads at once (the backbone's
rotary embedding, ``emb.cos()`` over 154 x 32 values, split in two halves), the main thread's half
of ``cos`` is off by up to 1.5e-4 in about one fresh process in 16 under load, and that run's
weights differ from its first loss on (docs/reliability.md, "Repeatable CPU runs"). A text
encoder's first GELU (``erf``) is exposed the same way.

One vector-math call on one element runs serially in the calling thread (ATen's grain is 2,048
elements) and settles the detector for every VML function (they share it) for the process's life.
"""

from __future__ import annotations


def settle_vector_math_dispatch() -> None:
    """Make MKL detect the CPU for its vector math now, in this thread (cheap; idempotent).

    Called first wherever a process builds a torch model: ``QAnchorModel``, the text encoder of
    ``encode`` and the LLM of ``qa-synth``. torch is imported here, not at module level, so that
    the data side's torch-free commands stay torch-free."""
    import torch

    if torch.backends.mkl.is_available():
        torch.cos(torch.zeros(1))  # one element: serial in this thread, through vmsCos
