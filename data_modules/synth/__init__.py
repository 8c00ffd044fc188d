"""The built-in synthetic worlds. In: a size and a seed. Out: a raw folder in the contract's
shape (events, users, scenarios, modalities, topics). ``catalogue`` is shared; ``default`` and
``dynamic`` each generate one world and never import each other; ``world`` writes the folder."""
