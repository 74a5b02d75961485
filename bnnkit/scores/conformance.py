"""``check_score``: the conformance check of a :class:`~bnnkit.scores.base.Score` plugin
(exported by :mod:`bnnkit.testing`)."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from torch import Tensor

from bnnkit.scores.base import Score, ScoreInputs, ScoreNotFitted

__all__ = ["check_score"]


def check_score(
    score: Score,
    inputs: ScoreInputs,
    labels: Tensor | None = None,
    *,
    fresh: Callable[[], Score] | None = None,
    atol: float = 1e-6,
) -> Tensor:
    """Assert that ``score`` behaves as evaluation and prediction expect; returns its values.

    - a score with ``fit_on`` set raises :class:`ScoreNotFitted` before it is fitted (checked
      when it is not fitted yet, or on ``fresh()``), then is fitted on ``inputs`` and ``labels``
      (1 = fake, 0 = real) when it is not fitted already;
    - ``score(inputs)`` is a finite float64 CPU tensor of shape ``[B]``, the same when called
      again, and row ``i`` depends on row ``i`` only (the first half, the second half and the
      reversed batch score the same rows alike, within ``atol``);
    - ``inputs.scores`` must hold the values of every score in ``score.needs``;
    - ``state_dict()`` holds only tensors that safetensors saves, ``meta()`` only JSON values;
      with ``fresh`` (builds an unfitted instance with the same options) both are loaded into
      ``fresh()``, which then scores the same.
    """
    from safetensors.torch import load, save

    name = type(score).__name__
    missing = [n for n in score.needs if n not in inputs.scores]
    assert not missing, f"{name} needs {missing} in inputs.scores"
    if score.fit_on is not None:
        assert labels is not None, f"{name} is fitted on {score.fit_on!r} images: pass labels"
        unfitted = fresh() if fresh is not None else (None if score.fitted else score)
        if unfitted is not None:
            try:
                unfitted(inputs)
            except ScoreNotFitted:
                pass
            else:
                raise AssertionError(f"{name} scored before it was fitted (ScoreNotFitted)")
        if not score.fitted:
            score.fit(inputs, labels)
        assert score.fitted, f"{name}.fit did not set fitted"
    values = score(inputs)
    batch = len(inputs)
    assert isinstance(values, Tensor), f"{name} returned {type(values).__name__}"
    assert tuple(values.shape) == (batch,), f"{name}: shape {tuple(values.shape)}, not ({batch},)"
    assert values.dtype == torch.float64 and values.device.type == "cpu", (
        f"{name}: {values.dtype} on {values.device}, expected float64 on the CPU"
    )
    assert torch.isfinite(values).all(), f"{name}: non-finite scores {values}"
    torch.testing.assert_close(score(inputs), values, msg=lambda m: f"{name}: not repeatable: {m}")
    half = max(1, batch // 2)
    parts = [slice(0, half), slice(half, batch), torch.arange(batch - 1, -1, -1)]
    for index in parts:
        if isinstance(index, slice) and index.start >= batch:
            continue
        torch.testing.assert_close(
            score(inputs.rows(index)),
            values[index],
            atol=atol,
            rtol=1e-6,
            msg=lambda m: f"{name}: a row's score depends on the rest of the batch ({m})",
        )
    state = score.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    assert not bad, f"{name}.state_dict() values must be tensors: {bad}"
    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    try:
        meta = json.loads(json.dumps(score.meta()))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}.meta() is not JSON-serialisable: {exc}") from None
    if fresh is not None:
        again = fresh()
        again.load_state_dict(load(data), meta)
        assert again.fitted, f"{name}.load_state_dict did not set fitted"
        try:
            loaded = again(inputs)
        except Exception as exc:  # e.g. an attribute fit() set that the state did not carry
            raise AssertionError(
                f"{name}: its fit did not survive state_dict() -> load_state_dict() (a fresh "
                f"instance raised {type(exc).__name__}: {exc}); save every fitted tensor in "
                "state_dict and restore it in load_state_dict"
            ) from exc
        torch.testing.assert_close(
            loaded, values, msg=lambda m: f"{name}: a loaded fit scores differently ({m})"
        )
    return values
