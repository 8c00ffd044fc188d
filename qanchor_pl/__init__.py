"""Q-Anchor PL: Query-as-Anchor user embeddings, trained with Lightning."""
