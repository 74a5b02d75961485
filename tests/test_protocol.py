"""``bnnkit protocol``: cells of each protocol, the tables, resume after an interruption, and the
submitit launcher (its local executor) giving the same table as the local one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import invoke

from bnnkit.api import run_protocol
from bnnkit.engine.protocol.cells import PROTOCOL_FILE, plan_cells
from bnnkit.errors import UsageError
from bnnkit.report.protocol import PAPER_ORDER, PUBLISHED_SDV4

pytestmark = pytest.mark.usefixtures("one_thread")

TWO = ["sdv4", "biggan"]  # a 2-cell cross protocol


def sets(root: Path) -> list[str]:
    return [
        f"data.root={json.dumps(str(root))}",
        "data.image_size=32",
        "train.epochs=2",
        "train.batch_size=8",
        "eval.samples=4",
        'train.backbone="frozen"',
    ]


def read_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, synth_root) -> Path:
    """The 2-cell cross protocol, uninterrupted, with one torch thread like the job processes
    of the launcher tests (OMP_NUM_THREADS=1): standardised frozen features make training
    sensitive to the summation order that the thread count changes."""
    import torch

    out = tmp_path_factory.mktemp("cross") / "p"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_protocol("cross", "quickstart", sets(synth_root), out=out, generators=TWO)
    finally:
        torch.set_num_threads(threads)
    return out


def test_cells_of_each_protocol(tmp_path) -> None:
    sdv4 = plan_cells("sdv4", ["quickstart"], [], tmp_path)
    assert [(c.train, len(c.unseen)) for c in sdv4] == [(("sdv4",), 7)]
    assert sdv4[0].unseen == tuple(g for g in PAPER_ORDER if g != "sdv4")
    two = plan_cells("sdv4", ["quickstart", "resnet50_map"], [], tmp_path)
    assert [c.block for c in two] == ["quickstart", "resnet50_map"]  # one block per recipe
    cross = plan_cells("cross", ["quickstart"], [], tmp_path)
    assert [c.train[0] for c in cross] == list(PAPER_ORDER)
    assert all(set(c.train).isdisjoint(c.unseen) and len(c.unseen) == 7 for c in cross)
    loo = plan_cells("loo", ["quickstart"], [], tmp_path)
    assert [(len(c.train), c.unseen) for c in loo] == [(7, (g,)) for g in PAPER_ORDER]
    assert len({c.cache_dir for c in cross + loo}) == 1  # one shared feature cache
    with pytest.raises(UsageError, match="data.holdout"):
        plan_cells("cross", ["quickstart"], ["data.holdout=[]"], tmp_path)
    with pytest.raises(UsageError, match="keep it in --generators"):
        plan_cells("sdv4", ["quickstart"], [], tmp_path, generators=["adm", "glide"])
    with pytest.raises(UsageError, match="given twice"):
        plan_cells("sdv4", ["quickstart", "quickstart"], [], tmp_path)


def test_sdv4_protocol_prints_published_rows_and_writes_the_tables(tmp_path, synth_root) -> None:
    out = tmp_path / "p"
    args = [a for s in sets(synth_root) for a in ("--set", s)]
    text = invoke(
        ["protocol", "sdv4", "--recipe", "quickstart", "--generators", "biggan,sdv4,midjourney",
         "--out", str(out), *args]
    )  # fmt: skip
    assert "ResNet-50†" in text and "Swin-T†" in text and "Published rows (†)" in text
    rows = read_csv(out)
    header = list(rows[0])
    assert header[6:9] == ["midjourney", "sdv4", "biggan"]  # the paper's column order
    assert header[9:] == ["average", "unseen_average", "ood_auroc", "errors_caught",
                          "real_average", "fake_average"]  # fmt: skip
    published = [r for r in rows if r["source"] == "published"]
    assert [r["row"] for r in published] == ["ResNet-50 (published)", "Swin-T (published)"]
    assert float(published[0]["midjourney"]) == pytest.approx(0.549)
    assert float(published[1]["biggan"]) == pytest.approx(PUBLISHED_SDV4["Swin-T"]["biggan"] / 100)
    (ours,) = [r for r in rows if r["source"] == "measured"]
    assert ours["block"] == "quickstart" and ours["unseen"] == "midjourney;biggan"
    for key in ("midjourney", "sdv4", "biggan", "average", "ood_auroc"):
        assert 0.0 <= float(ours[key]) <= 1.0
    record = json.loads((out / PROTOCOL_FILE).read_text())
    (cell,) = record["cells"]
    metrics = json.loads(Path(cell["metrics"]).read_text())
    assert metrics["seen_generators"] == ["sdv4"]
    assert set(metrics["ood_generators"]) == {"midjourney", "biggan"}
    assert cell["summary"]["accuracy"]["biggan"] == pytest.approx(float(ours["biggan"]))
    per = metrics["per_generator"]  # R.Acc / F.Acc: means over the three test generators
    for key, part in (("real_average", "real_accuracy"), ("fake_average", "fake_accuracy")):
        want = sum(per[g][part] for g in ("midjourney", "sdv4", "biggan")) / 3
        assert float(ours[key]) == pytest.approx(want, abs=1e-5)
    assert published[0]["real_average"] == published[0]["fake_average"] == ""
    assert record["table"][-1]["accuracy"]["sdv4"] == pytest.approx(float(ours["sdv4"]))
    assert (out / "heatmap.png").stat().st_size > 0
    assert "\\toprule" in (out / "table.tex").read_text()
    assert "SD1.4" in (out / "table.md").read_text()


def test_killed_protocol_finishes_remaining_cells_with_the_same_table(
    tmp_path, synth_root, cross_run, monkeypatch
) -> None:
    from bnnkit.engine.train.signals import StopSignals, TrainingInterrupted

    calls = [0]

    def stop_in_second_cell(self) -> bool:
        calls[0] += 1
        return calls[0] == 8  # cell 1 polls 6 times (2 epochs x (2 steps + 1)); then step 2

    out = tmp_path / "p"
    with monkeypatch.context() as m:
        m.setattr(StopSignals, "should_stop", stop_in_second_cell)
        with pytest.raises(TrainingInterrupted) as info:
            run_protocol("cross", "quickstart", sets(synth_root), out=out, generators=TWO)
    assert f"--out {out}" in info.value.hint
    assert not (out / "table.csv").exists()
    statuses: dict[str, str] = {}
    result = run_protocol(
        "cross", "quickstart", sets(synth_root), out=out, generators=TWO,
        on_cell=lambda c, i: statuses.__setitem__(c.key, i["status"]),
    )  # fmt: skip
    assert statuses == {"train-sdv4": "skipped", "train-biggan": "resumed"}
    assert (out / "table.csv").read_text() == (cross_run / "table.csv").read_text()
    assert len(result.rows) == 2 and result.rows[0]["accuracy"].keys() == set(TWO)

    # a lost metrics.json is re-evaluated; nothing is trained again
    first = Path(result.record["cells"][0]["run"])
    checkpoint = (first / "checkpoint.json").stat().st_mtime_ns
    (first / "metrics.json").unlink()
    statuses.clear()
    run_protocol(
        "cross", "quickstart", sets(synth_root), out=out, generators=TWO,
        on_cell=lambda c, i: statuses.__setitem__(c.key, i["status"]),
    )  # fmt: skip
    assert statuses == {"train-sdv4": "evaluated", "train-biggan": "skipped"}
    assert (first / "checkpoint.json").stat().st_mtime_ns == checkpoint
    assert (out / "table.csv").read_text() == (cross_run / "table.csv").read_text()


def test_slurm_launcher_with_submitits_local_executor_gives_the_same_table(
    tmp_path, synth_root, cross_run, monkeypatch
) -> None:
    monkeypatch.setenv("BNNKIT_SUBMITIT_CLUSTER", "local")  # submitit's LocalExecutor
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job processes: one torch thread each
    out = tmp_path / "p"
    args = [a for s in sets(synth_root) for a in ("--set", s)]
    invoke(
        ["protocol", "cross", "--recipe", "quickstart", "--generators", ",".join(TWO),
         "--launcher", "slurm", "--gpus", "0", "--out", str(out), *args]
    )  # fmt: skip
    assert list((out / "jobs").glob("*_result.pkl")), "cells did not run as submitit jobs"
    assert (out / "table.csv").read_text() == (cross_run / "table.csv").read_text()


def test_other_settings_into_the_same_out_are_refused_unless_forced(
    tmp_path, synth_root, cross_run, monkeypatch
) -> None:
    """A second protocol with other settings into a done folder trains nothing, replaces no
    table and names the keys that differ (exit 2); --force gets past the check."""
    import shutil

    from click.testing import CliRunner

    import bnnkit.engine.protocol.launch as launch_module
    from bnnkit.cli import main

    table = (cross_run / "table.md").read_text()
    args = [a for s in [*sets(synth_root), "train.epochs=3"] for a in ("--set", s)]
    result = CliRunner().invoke(
        main, ["protocol", "cross", "--recipe", "quickstart", "--generators", ",".join(TWO),
               "--out", str(cross_run), *args],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "other settings" in result.output and "train.epochs (2 -> 3)" in result.output
    assert "--force" in result.output
    assert (cross_run / "table.md").read_text() == table
    assert all(len(list(d.iterdir())) == 1 for d in (cross_run / "cells" / "quickstart").iterdir())
    with pytest.raises(UsageError, match=r"score \(\"mutual_info\" -> \"entropy\"\)"):
        run_protocol("cross", "quickstart", sets(synth_root), out=cross_run, generators=TWO,
                     score="entropy")  # fmt: skip

    class Launched(Exception):
        pass

    def launched(*args, **kwargs):
        raise Launched

    monkeypatch.setattr(launch_module, "launch", launched)
    copy = tmp_path / "copy"
    shutil.copytree(cross_run, copy, ignore=shutil.ignore_patterns("cache", "jobs"))
    # the same settings again (another launcher, device or job count) are no change
    with pytest.raises(Launched):
        run_protocol("cross", "quickstart", sets(synth_root), out=copy, generators=TWO, jobs=2)
    # without protocol.json, the cells' runs still tell: their recipe differs
    (copy / PROTOCOL_FILE).unlink()
    with pytest.raises(UsageError, match=r"recipe train.epochs \(2 -> 3\)"):
        run_protocol("cross", "quickstart", [*sets(synth_root), "train.epochs=3"], out=copy,
                     generators=TWO)  # fmt: skip
    with pytest.raises(Launched):  # --force: past the check, on to training
        run_protocol("cross", "quickstart", [*sets(synth_root), "train.epochs=3"], out=copy,
                     generators=TWO, force=True)  # fmt: skip
