"""Q-Anchor PL: Query-as-Anchor user embeddings, trained with Lightning."""

from data_modules.util.reproducible import pin_cpu_math

pin_cpu_math()  # before anything imports torch: MKL and OpenMP read these once, when they load
