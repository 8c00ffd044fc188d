"""UserU data, by stage. Data flows down this list and never back:

``synth`` (a built-in raw folder) -> ``contract`` (the raw folder read once) -> ``builder`` (UserU
data set; ``supervision`` writes its QA text) -> ``encode`` (event-text vectors) -> ``loading``
(streaming DataModules). ``dataset`` is the data set's own format, ``util`` the helpers every stage
uses."""
