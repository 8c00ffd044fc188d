"""UserU data: raw logs -> parquet shards (``etl``), streaming loaders (``loading``), helpers (``util``)."""

from data_modules.util.reproducible import pin_cpu_math

pin_cpu_math()  # before anything imports torch: MKL and OpenMP read these once, when they load
