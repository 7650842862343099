"""Layer 10 (publish): the book — notebooks executed with a profile and the book built (:mod:`.runner`,
``instructedit-book``), parameter sweeps (:mod:`.sweeps`, ``instructedit-sweep``) and the results page's claims,
provenance and costs (:mod:`.results`)."""
