"""Options as values: every command's Python function takes one options value and overrides by field name, the
command line makes its options from the same fields, and a new field reaches all of them with no other edit."""

from __future__ import annotations

import importlib
import sys
from dataclasses import fields, make_dataclass

import pytest
from click.testing import CliRunner

import cli
from classifiers.options import CVOptions, TrainOptions
from classifiers.select_options import SelectOptions
from embedder.kernel.errors import FeaturebankError
from embedder.options import ExtractOptions, RunOptions, ShardOptions, option, same_as, with_overrides
from workflows.deploy.options import ExportOptions
from workflows.finetune.options import FinetuneOptions


def test_overrides_replace_fields_by_name_and_a_wrong_name_is_one_error_naming_the_fields():
    base = ExtractOptions(backbone="resnet18", batch_size=8)
    o = with_overrides(ExtractOptions, base, {"batch_size": 4, "label_key": "json:label"})
    assert (o.backbone, o.batch_size, o.shards) == ("resnet18", 4, ShardOptions(label_key="json:label"))
    assert base.batch_size == 8  # values are frozen: an override makes a new one
    assert with_overrides(ExtractOptions, None, {}) == ExtractOptions()
    with pytest.raises(TypeError, match=r"^ExtractOptions has no field 'bacbone'; its fields are: .*backbone, "):
        with_overrides(ExtractOptions, None, {"bacbone": "resnet18"})
    with pytest.raises(TypeError, match="options must be a CVOptions, not TrainOptions"):
        with_overrides(CVOptions, TrainOptions(), {})
    f = FinetuneOptions.of(epochs=3, backbone="resnet18")  # a field of the training value inside, by its name
    assert (f.training.epochs, f.backbone, f.training.batch_size) == (3, "resnet18", 32)


def test_each_default_is_written_once_and_the_others_read_it():
    """The fields that repeat another command's option take its default (and help) from it: ``same_as``."""
    from classifiers import cost
    from embedder.job import Execution
    from embedder.resolve import Request
    from embedder.transformer import Embedder

    extract_defaults = ExtractOptions()
    for cls, names in [
        (FinetuneOptions, ("backbone", "weights", "resize", "crop", "draft", "max_pixels", "device")),
        (RunOptions, ("device", "batch_size", "workers", "layout", "engine")),
        (Request, ("backbone", "weights", "seed", "pooling", "precision")),
        (Execution, ("device", "engine", "batch_size", "max_pixels")),
    ]:
        assert {n: getattr(cls(), n) for n in names} == {n: getattr(extract_defaults, n) for n in names}, cls
    params = Embedder().get_params()
    assert {k: v for k, v in params.items() if k != "workers"} == {
        k: getattr(extract_defaults, k) for k in params if k != "workers"
    }
    assert "DEFAULT_BUDGET" not in vars(cost) and cost.parse_budget(CVOptions().budget) == 12 * 60.0
    assert ExportOptions().trust_pickle is RunOptions().trust_pickle is False
    same = {f.name: f for f in fields(RunOptions)}["batch_size"]
    assert same.metadata == {f.name: f for f in fields(ExtractOptions)}["batch_size"].metadata
    assert same_as(ExtractOptions, "seed", "Another help.").metadata["help"] == "Another help."


NEW = ("gamma", "float", option(1.0, "A new option, added in one place.", low=0.0))
# (options class, how the command line is invoked, the library function the command calls, its module)
COMMANDS = [
    (ExtractOptions, ["extract", "IN", "--cache", "c.h5", "-q"], "embedder.job", "_extract"),
    (CVOptions, ["cv", "c.h5"], "classifiers.crossval", "cross_validate"),
    (TrainOptions, ["train", "c.h5", "-o", "m.fbmodel"], "classifiers.bundle", "train"),
    (RunOptions, ["evaluate", "m.fbmodel", "IN"], "classifiers.bundle", "evaluate"),
    (ExportOptions, ["export", "m.fbmodel", "-o", "m.onnx"], "workflows.deploy.entry", "export"),
    (SelectOptions, ["select", "c.h5", "-o", "next.csv", "--budget", "3"], "classifiers.selection", "select"),
    (FinetuneOptions, ["finetune", "IN"], "workflows.finetune.run", "finetune"),
]


class Reached(Exception):
    """Raised by the stand-in for the library function, with what it was called with."""


@pytest.fixture
def with_new_field(monkeypatch):
    """Adds a field to an options class as an edit of its source would: the class with one more ``option`` field
    takes the old one's place in every module of ours that named it, and the command line is built again."""

    def add(cls):
        grown = make_dataclass(cls.__name__, [NEW], bases=(cls,), frozen=True, kw_only=True)
        grown.__module__ = cls.__module__
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").split(".")[0] in ("embedder", "classifiers", "workflows"):
                for name, value in list(vars(module).items()):
                    if value is cls:
                        monkeypatch.setattr(module, name, grown)
        importlib.reload(cli)
        return grown

    grown_classes = []

    def tracked(cls):
        grown_classes.append((add(cls), cls))
        return grown_classes[-1][0]

    yield tracked
    monkeypatch.undo()
    # a module first imported during the test took the grown class from its source module: give it the original
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").split(".")[0] in ("embedder", "classifiers", "workflows"):
            for name, value in list(vars(module).items()):
                for grown, original in grown_classes:
                    if value is grown:
                        setattr(module, name, original)
    importlib.reload(cli)


@pytest.mark.parametrize("cls, args, module, function", COMMANDS, ids=[c[1][0] for c in COMMANDS])
def test_a_new_field_reaches_the_command_line_and_the_python_api(
    with_new_field, monkeypatch, tmp_path, cls, args, module, function
):
    """The one place to add an option is its field. ``--help`` lists it, a value given on the command line reaches
    the library call in the options value, and the Python function takes it as an override; a name that is no
    field is still refused there. For ``extract``, the field reaches the job, whose ``Request`` and ``Execution``
    take options by name: an option that changes the vectors is recorded in the cache's settings once
    ``ExtractionSettings`` (embedder/kernel/settings.py) has a field of its name (``job.APPLIED``, as ``tta``); that
    is the one other place, since what the vectors depend on is a format that caches keep."""
    grown = with_new_field(cls)
    runner = CliRunner()
    shown = runner.invoke(cli.main, [args[0], "--help"])
    assert shown.exit_code == 0 and "--gamma" in shown.output and "A new option, added in one place." in shown.output

    seen = []

    def reached(*a, **kw):
        seen.append((a, kw))
        raise Reached

    target = importlib.import_module(module)
    original = getattr(target, function)
    monkeypatch.setattr(target, function, reached)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IN").mkdir()
    done = runner.invoke(cli.main, [*args, "--gamma", "2.5"])
    assert isinstance(done.exception, Reached), done.output
    (options,) = [v for v in [*seen[0][0], *seen[0][1].values()] if isinstance(v, grown)] or [
        seen[0][0][-1].options  # extract: the job made of them
    ]
    assert options.gamma == 2.5

    monkeypatch.setattr(target, function, original)  # the real library function, with the grown class
    call = {
        "extract": lambda **kw: importlib.import_module("embedder.job").extract("IN", "c.h5", **kw),
        "cv": lambda **kw: target.cross_validate("none.h5", **kw),
        "train": lambda **kw: target.train("none.h5", **kw),
        "evaluate": lambda **kw: target.evaluate("none.fbmodel", "IN", **kw),
        "export": lambda **kw: target.export("none.fbmodel", out="m.onnx", **kw),
        "select": lambda **kw: target.select("none.h5", budget=3, **kw),
        "finetune": lambda **kw: target.finetune("none", str(tmp_path / "run"), **kw),
    }[args[0]]
    if args[0] == "extract":
        jobs = []
        monkeypatch.setattr(target, "_extract", lambda group, started, job: jobs.append(job))
        call(gamma=3.0)
        assert jobs[0].options.gamma == 3.0 and "gamma" not in target.APPLIED
    else:
        with pytest.raises(FeaturebankError):  # accepted: what fails is the missing input, as without it
            call(gamma=3.0)
    with pytest.raises(TypeError, match="has no field 'gama'"):
        call(gama=3.0)


def test_list_options_from_python_read_as_the_command_line_reads_them():
    """One string is one item and commas split it, as -c and -l: "logreg" had been six one-letter classifiers."""
    o = with_overrides(CVOptions, None, {"classifiers": "logreg,rbf-svm:pca=128,C=10", "layers": "a+b,c"})
    assert o.classifiers == ("logreg", "rbf-svm:pca=128,C=10") and o.layers == ("a+b", "c")
    assert with_overrides(CVOptions, CVOptions(classifiers=["knn", "lda,ridge"]), {}).classifiers == (
        "knn",
        "lda",
        "ridge",
    )
    assert with_overrides(SelectOptions, None, {"exclude": "sent.csv"}).exclude == ("sent.csv",)
    assert with_overrides(ExtractOptions, None, {"layers": "penultimate"}).layers == ("penultimate",)
    with pytest.raises(FeaturebankError, match="unknown classifier 'nope'"):
        with_overrides(CVOptions, None, {"classifiers": "nope"})
    with pytest.raises(FeaturebankError, match="no classifier named"):  # had run the whole default zoo
        with_overrides(CVOptions, None, {"classifiers": ",,"})
    assert with_overrides(CVOptions, None, {"classifiers": ()}).classifiers is None
