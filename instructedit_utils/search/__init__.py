"""Layer 9 (search): chapter 5's instruction-construction loop — generate (:mod:`.generators`: the embedded chat
model or an OpenAI-compatible endpoint), filter with reasons (:mod:`.filters`), score with a trial editor, keep the
best (:mod:`.loop`, ``instructedit-search``)."""
