"""What a user walking through ``featurebank finetune`` was told, made true (issue of the fine-tuning walkthrough):
each model's count right and 95 % interval on the test images, and a note when the fine-tuned model is below the
probe there (with an exact McNemar test on the same images); the validation note's claim only when the head started
as the probe; a random head drawn from --seed; seconds that count every run of the folder; --cache for DATA;
which run a Ctrl-C interrupted; the rule --patience counts by; the from-scratch epochs printed; the table's
selection column named; --unfreeze past the network said; a --resume of a finished run said."""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields

import numpy as np
import pytest
import torch
from helpers import FAST, FAST_ARGS, write_tree
from PIL import Image

from classifiers.metrics import wilson
from embedder.kernel.errors import FeaturebankError
from workflows.finetune import finetune, replace_head
from workflows.finetune.options import TrainingOptions
from workflows.finetune.report import (
    below_probe_note,
    counts_right,
    epoch_text,
    kept_after_interrupt,
    mcnemar_p,
    numbers_note,
    result_text,
)

pytestmark = pytest.mark.usefixtures("own_cache_dir")

TINY = dict(FAST, val_split=0.25, augment="pixels")


def _colours(root, per_class: int, start: int = 0) -> None:
    """Two classes any features tell apart (reddish and bluish noise): the probe gets every test image right."""
    rng = np.random.default_rng(start)
    for name, channel in (("blue", 2), ("red", 0)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (80, 96, 3), dtype=np.uint8)
            arr[..., channel] = rng.integers(190, 256, (80, 96), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / name / f"img{start + i:02d}.png")


# -- 1. counts, intervals and the paired test on the test images -----------------------------------------------
def test_mcnemar_is_the_exact_binomial_on_the_discordant_images():
    assert mcnemar_p(5, 2) == pytest.approx(2 * (1 + 7 + 21) / 2**7)  # 0.453
    assert mcnemar_p(2, 5) == mcnemar_p(5, 2)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0  # capped at 1
    assert mcnemar_p(8, 0) == pytest.approx(2 / 2**8)


def test_counts_leave_out_the_files_a_model_could_not_score():
    y = np.array([0, 1, 1, 0, 1])
    got = counts_right(np.array([0, 1, 0, -1, 1]), y)
    assert got == {"test_right": 3, "test_total": 4, "test_accuracy_interval": list(wilson(3, 4))}


def test_the_note_says_both_counts_and_whether_the_difference_is_noise():
    y = np.zeros(20, dtype=np.int64)
    probe = y.copy()
    tuned = y.copy()
    tuned[:3] = 1  # the probe alone is right on 3 images
    note = below_probe_note(probe, tuned, y)
    assert note == (
        "the fine-tuned model is below the frozen probe on the --test images: 17 of 20 right against 20 of 20; "
        "only the probe was right on 3 image(s), only the fine-tuned model on 0: an exact McNemar test on these 3 "
        "gives p = 0.25, within noise (p >= 0.05)"
    )
    tuned[:8] = 1
    assert below_probe_note(probe, tuned, y).endswith("on these 8 gives p = 0.01, beyond noise (p < 0.05)")
    assert below_probe_note(probe, probe, y) is None and below_probe_note(tuned, probe, y) is None  # not below


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_a_fine_tuned_model_below_the_probe_on_the_test_images_is_said_with_its_counts(tmp_path, monkeypatch):
    """Every row has its count right of the images it scored and the Wilson interval, in report.json, report.md
    and the printed table; the fine-tuned row below the probe adds a note (report.json's notes, report.md)."""
    from workflows.finetune import run

    _colours(tmp_path / "images", per_class=4)
    _colours(tmp_path / "test", per_class=3, start=50)

    class Blue(torch.nn.Module):  # the chosen epoch, made to answer "blue" to every image
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)

    monkeypatch.setattr(run, "load_best", lambda net, folder: Blue())
    result = finetune(
        str(tmp_path / "images"), str(tmp_path / "run"), test=str(tmp_path / "test"), epochs=1, unfreeze=0, **TINY
    )
    probe, tuned = result.comparison[:2]
    assert (probe["test_right"], probe["test_total"], probe["test_accuracy"]) == (6, 6, 1.0)
    assert (tuned["test_right"], tuned["test_total"], tuned["test_accuracy"]) == (3, 6, 0.5)
    assert tuned["test_accuracy_interval"] == pytest.approx(wilson(3, 6))
    below = (
        "the fine-tuned model is below the frozen probe on the --test images: 3 of 6 right against 6 of 6; only the "
        "probe was right on 3 image(s), only the fine-tuned model on 0: an exact McNemar test on these 3 gives "
        "p = 0.25, within noise (p >= 0.05)"
    )
    assert result.notes == [below]
    d = json.loads((tmp_path / "run" / "report.json").read_text())
    assert d["notes"] == [below] and d["comparison"][1]["test_right"] == 3
    md = (tmp_path / "run" / "report.md").read_text()
    lo, hi = wilson(3, 6)
    assert f"| 50.00 | 3/6 | {100 * lo:.1f}-{100 * hi:.1f} |" in md and f"- {below}" in md
    table = result_text({**d, "files": result.files})
    assert table[4].split()[-6:-3] == ["50.00", "3/6", f"{100 * lo:.1f}-{100 * hi:.1f}"]
    html = (tmp_path / "run" / "report.html").read_text()  # the page too: counts, intervals and the note
    assert '<td class="n">3/6</td>' in html and f'<td class="n">{100 * lo:.1f}-{100 * hi:.1f}</td>' in html
    assert '<ul id="comparison-notes"><li>the fine-tuned model is below the frozen probe' in html


# -- 2. and 3. the random head: seeded, and the validation note true of it -------------------------------------
def test_a_random_head_is_drawn_from_the_seed_whatever_ran_before():
    def head(seed):
        torch.rand(7)  # the global generator moves between the two
        model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(8, 5))
        return replace_head(model, 3, seed=seed).weight.detach().clone()

    assert torch.equal(head(1), head(1)) and not torch.equal(head(1), head(2))
    state = torch.random.get_rng_state()
    head(3)
    torch.rand(7)
    assert not torch.equal(state, torch.random.get_rng_state())  # the draw itself leaves the global one as it was


def test_no_probe_init_gives_the_same_run_for_the_same_seed_and_says_it_can_be_below_the_probe(images, tmp_path):
    a = finetune(str(images), str(tmp_path / "a"), epochs=1, unfreeze=0, probe_init=False, **TINY)
    torch.rand(100)  # whatever the process did in between
    b = finetune(str(images), str(tmp_path / "b"), epochs=1, unfreeze=0, probe_init=False, **TINY)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    last = [torch.load(p / "last.pt", weights_only=True)["model"] for p in (tmp_path / "a", tmp_path / "b")]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    assert "cannot have a lower accuracy" not in a.note and "head started at random" in a.note
    assert a.note == numbers_note("validation", False)
    assert "epoch 0 is the probe, so the fine-tuned row cannot have a lower" in numbers_note("validation", True)


# -- 4., 6., 8. and 11.: a Ctrl-C in the from-scratch run, --resume, and a --resume of a finished run ------------
@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_ctrl_c_in_the_scratch_run_then_resume_counts_every_run_and_says_what_it_did(images, tmp_path, monkeypatch):
    from workflows.finetune.split import Embedding

    out = tmp_path / "run"
    real = Embedding.__call__

    def slow(self, source, part):  # the first run's embedding "took" 1 s more
        got = real(self, source, part)
        self.seconds += 1.0
        return got

    monkeypatch.setattr(Embedding, "__call__", slow)
    seen = []

    def interrupt(epoch, row):
        seen.append((row.get("run"), epoch))
        if row.get("run"):
            raise KeyboardInterrupt

    options = dict(epochs=2, unfreeze=1, from_scratch=True, **TINY)
    with pytest.raises(KeyboardInterrupt) as cut:
        finetune(str(images), str(out), on_epoch_end=interrupt, **options)
    assert seen == [(None, 1), (None, 2), ("from scratch", 1)]
    assert cut.value.kept == (
        f"the from-scratch run (--from-scratch) was interrupted: its epoch 1 is saved ({out}/scratch/last.pt); the "
        f"fine-tuned run had finished ({out}/last.pt); run the same command with --resume to continue"
    )
    monkeypatch.undo()
    lines = []
    resumed = finetune(
        str(images), str(out), resume=True, on_epoch_end=lambda e, r: lines.append(epoch_text(e, r)), **options
    )
    assert [x.split(":")[0] for x in lines] == ["from scratch, epoch 2"]
    assert not any("had finished already" in n for n in resumed.notes)
    probe, tuned, scratch = resumed.comparison
    assert probe["seconds"] >= 1.0  # the first run's embedding, though this one reused the cache
    assert (
        tuned["seconds"] == resumed.history[-1]["seconds"]
        and scratch["seconds"] == resumed.scratch_history[-1]["seconds"]
    )  # every epoch of either run, the interrupted run's included
    again = finetune(str(images), str(out), resume=True, **options)
    assert again.notes == [f"--resume: {out} had finished already (all 2 epochs): nothing was trained now"]
    assert [r["seconds"] for r in again.comparison[1:]] == [tuned["seconds"], scratch["seconds"]]
    assert again.comparison[0]["seconds"] >= 1.0


def test_what_a_ctrl_c_in_the_scratch_run_kept_before_its_first_epoch(tmp_path):
    said = kept_after_interrupt(str(tmp_path), 3, None, {"epoch": None})
    assert said == (
        "the from-scratch run (--from-scratch) was interrupted: no epoch of it had finished, so nothing of it is "
        f"saved and --resume starts it again at epoch 1; the fine-tuned run had finished ({tmp_path}/last.pt); run "
        "the same command with --resume to continue"
    )
    assert kept_after_interrupt(str(tmp_path), 3, None).startswith(f"epoch 3 is saved ({tmp_path}/last.pt)")


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_a_ctrl_c_while_the_test_images_are_scored_names_that_phase_and_resume_scores_them(
    images, tmp_path, monkeypatch
):
    """It had said "epoch N is saved", true but not what was interrupted; --resume then trains nothing and scores."""
    from workflows.finetune import run

    write_tree(tmp_path / "test", per_class=1, start=50)
    real = run.embed_test

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "embed_test", stopped)
    args = dict(test=str(tmp_path / "test"), epochs=1, unfreeze=0, **TINY)
    with pytest.raises(KeyboardInterrupt) as caught:
        finetune(str(images), str(tmp_path / "run"), **args)
    assert caught.value.kept == (  # type: ignore[attr-defined]
        f"training had finished ({tmp_path / 'run' / 'best.pth'} holds the chosen epoch); the --test images were "
        "being embedded and scored: run the same command with --resume to score them without training"
    )
    monkeypatch.setattr(run, "embed_test", real)
    done = finetune(str(images), str(tmp_path / "run"), resume=True, **args)
    assert done.reported_on == "test" and done.comparison[0]["test_total"] == 3
    assert any(n.startswith(f"--resume: {tmp_path / 'run'} had finished already") for n in done.notes)


# -- 5. and 10.: --cache, --unfreeze past the network ----------------------------------------------------------
def test_cache_reuses_the_extraction_of_data_and_unfreeze_past_the_network_is_said(images, tmp_path):
    from click.testing import CliRunner

    import cli
    from embedder import extract

    made = extract(str(images), str(tmp_path / "mine.h5"), **FAST)
    assert made.embedded and made.rows == 12
    args = ["finetune", str(images), "-o", str(tmp_path / "run"), *FAST_ARGS, "--batch-size", "4", "--val-split",
            "0.25", "--augment", "pixels", "--epochs", "1", "--unfreeze", "9", "--cache", str(tmp_path / "mine.h5")]  # fmt: skip
    done = CliRunner().invoke(cli.main, args)
    assert done.exit_code == 0, done.output
    assert not os.path.exists(tmp_path / "cache") or not [
        f for f in os.listdir(tmp_path / "cache") if f.endswith(".h5")
    ]  # no second cache of DATA
    assert done.output.splitlines()[0] == "note: --unfreeze 9: the network has 6 blocks, all unfrozen"
    d = json.loads((tmp_path / "run" / "report.json").read_text())
    assert d["notes"] == ["--unfreeze 9: the network has 6 blocks, all unfrozen"]
    assert d["comparison"][1]["model"] == "fine-tuned (last 6 block(s) + head)"
    probe_seconds = d["comparison"][0]["seconds"]
    assert probe_seconds < made.seconds + 1  # nothing embedded again: the fit alone


def test_the_same_folder_without_resume_is_refused_before_anything_is_embedded(images, tmp_path, monkeypatch):
    from workflows.finetune import split

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    monkeypatch.setattr(split, "extract", lambda *a, **k: pytest.fail("embedded"))
    with pytest.raises(FeaturebankError, match="holds a run already: add --resume"):
        finetune(str(images), str(tmp_path / "run"), epochs=1, **TINY)


# -- 7. and 9.: the words of --patience and of the table --------------------------------------------------------
def test_patience_says_the_rule_the_loop_counts_by():
    from workflows.finetune.loop import better

    text = {f.name: f.metadata["help"] for f in fields(TrainingOptions)}["patience"]
    assert "a higher accuracy, or the same accuracy with a lower loss" in text
    assert better({"accuracy": 0.5, "loss": 0.4}, {"accuracy": 0.5, "loss": 0.6})  # a loss-only improvement counts
    assert not better({"accuracy": 0.5, "loss": 0.7}, {"accuracy": 0.5, "loss": 0.6})


def test_the_printed_table_names_the_selection_column_as_report_md_does():
    row = {"model": "m", "val_accuracy": 0.9, "val_balanced_accuracy": 0.8, "seconds": 1.0}
    base = {"blocks": [], "trainable_parameters": 1, "note": "n", "skipped": [], "checkpoint": "c", "best_epoch": 0,
            "files": {"report_html": "r"}}  # fmt: skip
    for on, extra in (("val", {}), ("test", {"test_accuracy": 0.5, "test_balanced_accuracy": 0.5})):
        header = result_text({**base, "reported_on": on, "comparison": [{**row, **extra}]})[2]
        assert "val acc % (selection)" in header and header.count("val acc") == 1


def test_epoch_lines_of_the_scratch_run_say_so():
    row = {"train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.25, "seconds": 3.0}
    assert epoch_text(2, row) == "epoch 2: train loss 1.0000 acc 50.0 %, val loss 0.9000 acc 25.0 % (3.0 s)"
    assert epoch_text(2, {**row, "run": "from scratch"}).startswith("from scratch, epoch 2: train loss 1.0000")
    assert math.isclose(mcnemar_p(1, 0), 1.0)
