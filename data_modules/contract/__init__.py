"""The raw folder read once. In: a raw folder (``--raw DIR``) and per-file overrides. Out:
:class:`~data_modules.contract.inputs.RawInputs`, typed and immutable: the events files (schemas
checked), the users table, scenarios, modality metadata, topics, labels, QA pairs and a refresh's
previous state. Every wrong shape is one :class:`~data_modules.util.errors.DataError` naming the
file, the entry or row and what was expected; nothing is written here."""
