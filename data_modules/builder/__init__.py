"""``qanchor build``. In: :class:`~data_modules.contract.inputs.RawInputs` and the build
options. Out: a UserU data set (shards, vocabularies, benchmarks, topics, tokenizer, manifest).
Stages: ``plan`` (one process) -> ``scatter`` -> ``stats`` -> ``shards`` (one task per partition)
-> ``merge`` + ``finish`` (one process); ``refresh`` rolls a data set forward; ``runner`` orders
them."""
