"""Layer 8 (analysis): numbers turned into the book's findings — the one verdict rule (:mod:`.verdicts`), Table 1
(:mod:`.table1`), Table 3 (:mod:`.table3`), Fig. 3 (:mod:`.unseen`), editing-area separation (:mod:`.separation`),
chapter 7's findings (:mod:`.findings`), chapter 8's sequential and batch editing (:mod:`.sequential`) and the figures
(:mod:`.plotting`). Nothing here edits or trains."""
