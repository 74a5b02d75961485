"""``bnnkit train``: a recipe into a trained run directory.

Owns the entry point (:mod:`.run`, what :func:`bnnkit.api.train` and protocol cells call), the
trainer (:mod:`.trainer`), its phases (:mod:`.phases`) and epoch loop (:mod:`.epochs`), the
training data (:mod:`.data`), resumable state and run metadata (:mod:`.state`), stop signals
(:mod:`.signals`), data parallelism (:mod:`.distributed`) and whole-detector ensembles
(:mod:`.members`). Mixed precision and compilation are ``device``'s (:class:`~bnnkit.engine.
device.Acceleration`), ``recipes validate``'s construction check is ``build``'s
(:func:`~bnnkit.engine.build.check_build`).

May import: :mod:`bnnkit.engine.features`, ``build``, ``device`` and the lower layers. Never
posthoc, evaluate, predict or protocol.
"""
