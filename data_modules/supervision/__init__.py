"""The QA text of a data set. In: each user's cleaned events and the topic pool. Out:
D_future and D_uqa answers (``templated``, checked by reflection), the derived topic pool
(``topics``), the per-user pairs the shards carry (``pairs``) and LLM-written D_uqa
(``qa_synth``)."""
