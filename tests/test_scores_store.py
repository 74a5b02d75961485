"""Fitted scores in a run (safetensors + JSON), names and aliases, needs, and score plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from bnnkit import hookimpl
from bnnkit.errors import PluginError
from bnnkit.scores import Score, ScoreInputs, ScoreNotFitted
from bnnkit.scores.store import (
    DEFAULT_SCORES,
    build_score,
    compute_scores,
    fit_paths,
    load_fit,
    require_fit,
    resolve_names,
    save_fit,
    stale_reason,
)
from bnnkit.testing import check_score, invoke, registered


def batch(n: int, seed: int) -> tuple[ScoreInputs, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    feats = torch.randn(n, 12, generator=g) + labels[:, None].float()
    logits = torch.randn(3, n, 2, generator=g) + feats[:, :2]
    return ScoreInputs(feats, logits, logits.softmax(-1)), labels


def fit_run(run, fingerprint: str = "model-a") -> dict[str, Score]:
    """Fit mahalanobis and knn on 'train', fused on 'seen' (as evaluate does) and save them."""
    train, y = batch(40, 0)
    seen, y_seen = batch(20, 1)
    scores = {n: build_score(n) for n in ("mahalanobis", "knn")}
    for name, score in scores.items():
        score.fit(train, y)
        save_fit(run, name, score, fingerprint)
    fused = build_score("fused", {"scores": ["mahalanobis", "knn", "mutual_info"]})
    comps = compute_scores({**scores, "mutual_info": build_score("mutual_info")}, seen)
    fused.fit(ScoreInputs(torch.zeros(20, 0), torch.zeros(0), torch.zeros(0), comps), y_seen)
    save_fit(run, "fused", fused, fingerprint)
    return {**scores, "fused": fused}


def test_save_then_load_in_a_fresh_instance(tmp_path) -> None:
    fitted = fit_run(tmp_path)
    test, _ = batch(15, 2)
    expected = compute_scores(fitted, test)
    assert set(expected) == {"mahalanobis", "knn", "mutual_info", "fused"}  # a need is computed
    loaded = {n: load_fit(tmp_path, n, fingerprint="model-a") for n in fitted}
    assert all(s is not None for s in loaded.values())
    got = compute_scores(loaded, test)  # type: ignore[arg-type]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    empty = ScoreInputs(torch.zeros(0, 12), torch.zeros(3, 0, 2), torch.zeros(3, 0, 2))
    assert all(v.shape == (0,) for v in compute_scores(loaded, empty).values())  # type: ignore[arg-type]
    info = json.loads(fit_paths(tmp_path, "knn")[1].read_text())
    assert info["fingerprint"] == "model-a" and info["n"] == 40 and info["options"]["k"] == "auto"
    assert info["class"].endswith("KNearest") and info["fit_on"] == "train"
    assert not list((tmp_path / "scores").glob("*.tmp*"))  # atomic writes leave nothing behind


def test_a_fitted_score_survives_predict_in_a_new_process(tmp_path) -> None:
    fitted = fit_run(tmp_path)
    test, _ = batch(15, 2)
    save_file(
        {"features": test.features, "logits": test.logits, "probs": test.probs}, tmp_path / "in.st"
    )
    code = textwrap.dedent(
        f"""
        from safetensors.torch import load_file, save_file
        from bnnkit.scores import ScoreInputs
        from bnnkit.scores.store import compute_scores, require_fit
        t = load_file({str(tmp_path / "in.st")!r})
        scores = {{n: require_fit({str(tmp_path)!r}, n, fingerprint="model-a")
                  for n in ("mahalanobis", "knn", "fused")}}
        out = compute_scores(scores, ScoreInputs(t["features"], t["logits"], t["probs"]))
        save_file(out, {str(tmp_path / "out.st")!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    got = load_file(tmp_path / "out.st")
    expected = compute_scores(fitted, test)
    for name in ("mahalanobis", "knn", "fused"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_stale_and_missing_fits(tmp_path) -> None:
    fit_run(tmp_path)
    assert load_fit(tmp_path, "gmm") is None
    assert "no fit of score 'gmm'" in (stale_reason(tmp_path, "gmm") or "")
    assert load_fit(tmp_path, "knn", fingerprint="model-b") is None  # the model changed
    assert "another model" in (stale_reason(tmp_path, "knn", fingerprint="model-b") or "")
    assert load_fit(tmp_path, "knn", options={"k": 3}) is None  # fitted with k = auto
    assert load_fit(tmp_path, "knn", options={"k": "auto"}) is not None  # defaults filled in
    tensors, _ = fit_paths(tmp_path, "mahalanobis")
    tensors.write_bytes(tensors.read_bytes()[:-8] + b"\0" * 8)  # an interrupted rewrite
    assert load_fit(tmp_path, "mahalanobis") is None
    with pytest.raises(ScoreNotFitted, match="fitted for another model") as info:
        require_fit(tmp_path, "knn", fingerprint="model-b")
    assert "bnnkit evaluate" in (info.value.hint or "")
    assert load_fit(tmp_path, "entropy") is not None  # nothing to fit, nothing to load
    assert load_fit(tmp_path, "total") is not None  # alias


def test_names_aliases_and_defaults() -> None:
    assert resolve_names(["total", "epistemic", "entropy", "knn"]) == [
        "entropy",
        "mutual_info",
        "knn",
    ]
    with pytest.raises(PluginError, match="did you mean 'mahalanobis'"):
        resolve_names(["mahalanobsi"])
    assert resolve_names(DEFAULT_SCORES) == list(DEFAULT_SCORES)
    for name in ("max_prob", "entropy", "mutual_info"):
        assert name in DEFAULT_SCORES


def test_compute_scores_uses_given_components_and_refuses_unfitted_needs() -> None:
    test, y = batch(10, 3)
    fused = build_score("fused", {"scores": ["entropy", "knn"]})
    given = {"knn": torch.arange(10.0, dtype=torch.float64)}
    seen = ScoreInputs(test.features, test.logits, test.probs, given)
    fused.fit(
        ScoreInputs(
            torch.zeros(10, 0),
            torch.zeros(0),
            torch.zeros(0),
            compute_scores({"entropy": build_score("entropy")}, test) | given,
        ),
        y,
    )
    out = compute_scores({"fused": fused}, seen)  # knn's value is taken from inputs.scores
    assert set(out) == {"fused", "entropy", "knn"} and out["knn"] is given["knn"]
    with pytest.raises(ScoreNotFitted):
        compute_scores({"fused": fused}, test)  # knn is needed, missing and not fitted


class Norm(Score):
    """A third-party score: the feature norm (scales by an option), no fit."""

    summary = "feature norm"
    source = "a test"

    def __call__(self, inputs: ScoreInputs) -> torch.Tensor:
        return self.as_output(inputs.features.norm(dim=1))


def test_a_third_party_score_plugin_is_registered_and_listed() -> None:
    module = types.ModuleType("bnnkit_fake_score_plugin")

    @hookimpl
    def register_scores(register) -> None:
        register("fake_norm", Norm)

    module.register_scores = register_scores  # type: ignore[attr-defined]
    with registered(module) as registry:
        assert "fake_norm" in registry.names("score")
        entry = registry.get("score", "fake_norm")
        assert entry.summary == "feature norm" and entry.package == "bnnkit_fake_score_plugin"
        test, _ = batch(6, 4)
        values = check_score(build_score("fake_norm"), test)
        torch.testing.assert_close(values, test.features.double().norm(dim=1))
        data = json.loads(invoke(["plugins", "--kind", "score", "--json"]))
        row = next(r for r in data["plugins"] if r["name"] == "fake_norm")
        assert row["source"] == "a test" and row["fit_on"] is None
        assert {r["name"] for r in data["plugins"]} >= {"mahalanobis", "knn", "vim", "fused"}
        assert "fake_norm" in invoke(["plugins", "--kind", "score"])
    assert "fake_norm" not in resolve_names_or_empty()


def resolve_names_or_empty() -> list[str]:
    from bnnkit.plugins import get_registry

    return get_registry().names("score")


def test_the_guides_example_score_works() -> None:
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text("utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", guide, re.M | re.S)
    (block,) = [b for b in blocks if "def register_scores(register" in b and "register(" in b]
    module = types.ModuleType("bnnkit_docs_example_score")
    exec(compile(block, "docs/plugins.md", "exec"), module.__dict__)
    with registered(module) as registry:
        (name,) = [
            n
            for n in registry.names("score")
            if registry.get("score", n).plugin.endswith("example_score")
        ]
        train, y = batch(10, 5)
        check_score(
            build_score(name, registry=registry),
            train,
            y,
            fresh=lambda: build_score(name, registry=registry),
        )
