"""``bnnkit evaluate``: a trained run judged on held-out images.

Owns the evaluation (:mod:`.run`) and what it writes besides ``metrics.json``
(:mod:`.write`), its options (:mod:`.options`), resumable partial results (:mod:`.partial`),
several benchmarks in one evaluation (:mod:`.benchmarks`, :mod:`.benchmark_parts`) and the
adversarial conditions (:mod:`.attack`). The post-hoc fits it reads and writes (temperature,
score fits, the chosen score set) are :mod:`bnnkit.engine.posthoc`'s.

May import: :mod:`bnnkit.engine.features`, :mod:`bnnkit.engine.posthoc`, ``build``, ``device``
and the lower layers. Never train, predict or protocol.
"""
