"""``bnnkit evaluate`` and ``bnnkit calibrate``: a trained run judged on held-out images.

Owns the evaluation (:mod:`.run`) and what it writes besides ``metrics.json``
(:mod:`.write`), its options (:mod:`.options`), resumable partial results (:mod:`.partial`), the
score plugins' fits (:mod:`.score_fit`) and chosen set (:mod:`.score_set`), and the post-hoc
temperature (:mod:`.calibrate`). Predict reuses the last two (saved scores, temperature).

May import: :mod:`bnnkit.engine.features`, ``build``, ``device`` and the lower layers. Never
train, predict or protocol.
"""
