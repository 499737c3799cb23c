"""The protocol objects: lookup by name, record metrics from integer counts, table rules, import layering."""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from promptlab.errors import ConfigError
from promptlab.protocols import (
    PROTOCOLS,
    MissingMetricError,
    Protocol,
    build_protocol_data,
    get_protocol,
    protocol_metrics,
    table_protocol,
)
from promptlab.results.metrics import harmonic_mean

PROTOCOLS_DIR = Path(__file__).resolve().parent.parent / "src" / "promptlab" / "protocols"


def _eval(name: str, n_correct: int, n_images: int, acc: float | None = None, dataset: str = "toy") -> dict:
    # `acc` deliberately disagrees with the counts where given: the metrics must come from the counts.
    return {"name": name, "dataset": dataset, "subset": "all", "n_correct": n_correct, "n_images": n_images,
            "acc": 100.0 * n_correct / n_images - 0.013 if acc is None else acc}


@pytest.mark.parametrize("name", ["base2novel", "fewshot", "cross_dataset", "domain_generalization"])
def test_get_protocol_for_each_name(name: str) -> None:
    protocol = get_protocol(name)
    assert isinstance(protocol, Protocol) and protocol.name == name
    assert get_protocol(name) is protocol  # one object per protocol
    assert table_protocol(name) is protocol
    assert name in PROTOCOLS


def test_protocol_order_and_unknown_name() -> None:
    assert PROTOCOLS == ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
    with pytest.raises(ConfigError, match="unknown protocol 'zero2hero'") as info:
        get_protocol("zero2hero")
    for name in PROTOCOLS:
        assert name in str(info.value)
    assert isinstance(info.value, ValueError)  # callers that caught ValueError keep working
    with pytest.raises(ValueError, match="expected one of"):
        build_protocol_data({"name": "zero2hero"}, {"name": "toyworld"}, Path("/nonexistent"), 1, 1)
    with pytest.raises(ValueError, match="expected one of"):
        protocol_metrics("zero2hero", [])
    # Tables of records with an unknown protocol still work: every numeric metric becomes a column.
    generic = table_protocol("zero2hero")
    assert generic.name == "zero2hero" and not generic.average_rows
    assert generic.values({"metrics": {"a": 1, "b": 2.5, "flag": True, "s": "x"}}) == {"a": 1.0, "b": 2.5}


def test_accuracy_from_counts_is_exact() -> None:
    metrics = protocol_metrics("fewshot", [_eval("all", 2, 5, acc=39.999)])
    assert metrics == {"acc": 40.0}
    assert metrics["acc"] == 40.0  # exactly, not approximately
    assert get_protocol("fewshot").metrics([_eval("all", 57, 80)]) == {"acc": 71.25}


def test_base2novel_hm_from_counts() -> None:
    metrics = protocol_metrics("base2novel", [_eval("base", 2, 5), _eval("novel", 3, 4)])
    assert metrics["base_acc"] == 40.0 and metrics["novel_acc"] == 75.0
    assert metrics["hm"] == harmonic_mean(40.0, 75.0) == 2 * 40.0 * 75.0 / 115.0
    assert set(metrics) == {"base_acc", "novel_acc", "hm"}
    with pytest.raises(ValueError, match=r"missing \['novel'\]"):
        protocol_metrics("base2novel", [_eval("base", 2, 5)])


@pytest.mark.parametrize("name", ["cross_dataset", "domain_generalization"])
def test_transfer_metrics_from_counts(name: str) -> None:
    evaluations = [_eval("imagenet", 7, 10, dataset="imagenet"), _eval("dtd", 1, 4, dataset="dtd"),
                   _eval("eurosat", 2, 5, dataset="eurosat")]
    metrics = protocol_metrics(name, evaluations)
    assert metrics == {"imagenet_acc": 70.0, "dtd_acc": 25.0, "eurosat_acc": 40.0,
                       "target_mean_acc": statistics.fmean([25.0, 40.0])}
    assert "target_mean_acc" not in protocol_metrics(name, evaluations[:1])  # the source alone: no targets


def test_counts_are_required_and_checked() -> None:
    with pytest.raises(ValueError, match="'all' has no 'n_correct'"):
        protocol_metrics("fewshot", [{"name": "all", "acc": 40.0, "n_images": 5}])
    with pytest.raises(ValueError, match="integer count"):
        protocol_metrics("fewshot", [{"name": "all", "n_correct": 2.0, "n_images": 5}])
    with pytest.raises(ValueError, match="n_correct=6 must lie in"):
        protocol_metrics("fewshot", [{"name": "all", "n_correct": 6, "n_images": 5}])


def test_table_rules_of_the_protocols() -> None:
    b2n = get_protocol("base2novel")
    record = {"summary": {"dataset": "toy"}, "metrics": {"base_acc": 80.0, "novel_acc": 60.0, "hm": 1.0}}
    assert b2n.values(record) == {"base": 80.0, "novel": 60.0, "hm": harmonic_mean(80.0, 60.0)}  # HM recomputed
    with pytest.raises(MissingMetricError, match="novel_acc"):
        b2n.values({"summary": {}, "metrics": {"base_acc": 80.0}})
    # Average row: HM of the averaged base and novel, not the mean of the per-dataset HMs.
    average = b2n.average({"base": [90.0, 96.0], "novel": [50.0, 78.0], "hm": [64.3, 86.2]})
    assert average == {"base": 93.0, "novel": 64.0, "hm": harmonic_mean(93.0, 64.0)}
    assert b2n.average({"base": [90.0, 96.0], "hm": [1.0, 2.0]}) == {}  # no novel: nothing to show
    assert b2n.average_rows and get_protocol("fewshot").average_rows
    assert get_protocol("fewshot").average({"acc": [60.0, 80.0]}) == {"acc": 70.0}

    dg = get_protocol("domain_generalization")
    assert not dg.average_rows
    record = {"summary": {"dataset": "imagenet"},
              "evaluations": [{"dataset": "imagenet"}, {"dataset": "imagenet_a"}, {"dataset": "imagenet_r"}],
              "metrics": {"imagenet_acc": 70.0, "imagenet_a_acc": 30.0, "imagenet_r_acc": 50.0,
                          "target_mean_acc": 40.0}}
    values = dg.values(record)
    assert values == {"source": 70.0, "imagenet_a": 30.0, "imagenet_r": 50.0, "target_mean": 40.0}
    assert dg.value_columns([{"target_mean": 1.0, "source": 1.0}, {"x": 1.0}]) == ["source", "x", "target_mean"]


def test_protocols_import_only_what_the_layering_allows() -> None:
    allowed = ("promptlab.protocols", "promptlab.data", "promptlab.toy.reader", "promptlab.results.metrics",
               "promptlab.errors")
    for path in sorted(PROTOCOLS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("promptlab"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
    # And at run time: reading the protocols loads neither the engine, the entry point nor the tables.
    code = ("import sys, promptlab.protocols; "
            "print(sorted(m for m in sys.modules if m.startswith(('promptlab.engine', 'promptlab.train', "
            "'promptlab.results.table', 'torch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
