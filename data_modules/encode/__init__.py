"""``qanchor encode``. In: a built data set's vocabularies. Out: ``vectors/{modality}.npy``, one
vector per distinct event text (``encoders``: the text encoders; ``dataset``: parts, merge and
resume)."""
