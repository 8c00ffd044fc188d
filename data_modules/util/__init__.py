"""Small helpers with one home each: atomic writes, stable hashing, errors, counted skips,
locks, partition ownership."""
