"""What is fitted after training, on the calibration split, and read back by evaluate/predict.

Owns ``bnnkit calibrate``'s post-hoc temperature (:mod:`.calibrate`), the score plugins' fits on
training and seen images (:mod:`.score_fit`, ``RUN/scores/``) and the chosen score set with the
fits an evaluation saves for predict (:mod:`.score_set`), and the thresholds written to
``threshold.json`` (:mod:`.threshold`: abstention, ``--guarantee``'s split-conformal bound,
``--max-false-alarm``'s verdict threshold). Every fit here uses the calibration
split carved out of the training folders, never the validation images evaluate reports on.

May import: :mod:`bnnkit.engine.features`, ``build``, ``device`` and the lower layers. Never
train, evaluate, predict or protocol (evaluate and predict import it).
"""
