"""Key material: envelope encryption of templates (:mod:`.envelope`) and the protection of
the vectors the search index holds (:mod:`.vector_protection`)."""
