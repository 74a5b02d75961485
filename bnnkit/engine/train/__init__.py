"""``bnnkit train``: a recipe into a trained run directory.

Owns the entry point (:mod:`.run`, what :func:`bnnkit.api.train` and protocol cells call), the
trainer (:mod:`.trainer`), its phases (:mod:`.phases`) and epoch loop (:mod:`.epochs`), the
training data (:mod:`.data`), resumable state and run metadata (:mod:`.state`), stop signals
(:mod:`.signals`), mixed precision and compilation (:mod:`.accel`), data parallelism
(:mod:`.distributed`), whole-detector ensembles (:mod:`.members`) and ``recipes validate``'s
construction check (:mod:`.check`: it builds what training would, ensembles included).

May import: :mod:`bnnkit.engine.features`, ``build``, ``device`` and the lower layers. Never
evaluate, predict or protocol.
"""
