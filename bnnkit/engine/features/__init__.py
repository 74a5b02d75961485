"""Images to pooled features and head outputs, shared by every command.

Owns the streaming loop and loaders (:mod:`.loop`), the feature cache (:mod:`.cache`) and its
on-disk shards (:mod:`.store`), feature standardisation (:mod:`.standardise`) and tiled streaming
of whole images (:mod:`.tiles`, with the attention maps that ``--explain`` draws: both evaluate
and predict tile, so it lives below them).

May import: :mod:`bnnkit.engine.build`, :mod:`bnnkit.engine.device` and the lower layers
(data, model, methods, metrics, run, report). Never train, evaluate, predict or protocol.
"""
