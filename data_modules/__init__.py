"""UserU data: raw logs -> parquet shards (``etl``), streaming loaders (``loading``), helpers (``util``)."""
