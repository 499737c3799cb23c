"""The protocol objects: the registry, lookup by name, record metrics from integer counts, table rules, import
layering, and a fifth protocol added as one class plus one YAML."""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from promptlab.errors import ConfigError
from promptlab.protocols import (
    MissingMetricError,
    Protocol,
    build_protocol_data,
    get_protocol,
    protocol_metrics,
    protocol_names,
    register_protocol,
    table_protocol,
    unregister_protocol,
)
from promptlab.results.metrics import harmonic_mean

SHIPPED = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")  # the papers' order

PROTOCOLS_DIR = Path(__file__).resolve().parents[2] / "src" / "promptlab" / "protocols"


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
    assert name in protocol_names()


def test_protocol_order_and_unknown_name() -> None:
    assert protocol_names() == SHIPPED
    with pytest.raises(ConfigError, match="unknown protocol 'zero2hero'") as info:
        get_protocol("zero2hero")
    assert "docs/protocols.md" in str(info.value)  # says how to add one
    for name in SHIPPED:
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


# --------------------------------------------------------------------------- the registry
def _decorated_protocols() -> dict[str, str]:
    """Protocol name -> module, read from the source: every class under `@register_protocol` and its `name`."""
    found = {}
    for path in sorted(PROTOCOLS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            if not any(isinstance(d, ast.Name) and d.id == "register_protocol" for d in node.decorator_list):
                continue
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "name"
                                                         for t in stmt.targets)):
                    found[ast.literal_eval(stmt.value)] = f"promptlab.protocols.{path.stem}"
    return found


def test_every_decorated_protocol_module_is_discovered() -> None:
    # In a fresh interpreter: the names must come from discovery, not from modules this test run imported.
    code = ("import sys; from promptlab.protocols import get_protocol, protocol_names; "
            "print(';'.join(f'{n}={type(get_protocol(n)).__module__}' for n in protocol_names()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    registered = dict(item.split("=") for item in done.stdout.strip().split(";"))
    assert registered == _decorated_protocols()
    assert tuple(registered) == SHIPPED  # the declared `order`, not the modules' A-Z order


class _Nameless(Protocol):
    pass


class _Impostor(Protocol):
    name = "fewshot"


def test_register_protocol_refuses_what_would_be_ambiguous() -> None:
    with pytest.raises(TypeError, match="not a promptlab.protocols.Protocol subclass"):
        register_protocol(dict)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="has no name"):
        register_protocol(_Nameless)
    with pytest.raises(ConfigError, match="'fewshot' is registered twice") as info:
        register_protocol(_Impostor)
    assert "promptlab.protocols.fewshot.FewShot" in str(info.value)
    assert type(get_protocol("fewshot")).__name__ == "FewShot"  # the shipped one is still the registered one


def test_every_published_data_file_belongs_to_a_registered_protocol() -> None:
    from promptlab.results.published import DATA_FILES

    assert set(DATA_FILES) <= set(protocol_names())


# --------------------------------------------------------------------------- a fifth protocol
class BaseToAll(Protocol):
    """A made-up protocol (generalised zero-shot): train on the base half of the classes, test among all of
    them at once, one accuracy. Written as a new protocol module would be, without `@register_protocol` so
    that the fixture below can register and remove it."""

    name = "base_to_all"
    average_rows = True
    column_titles = {"all": "All"}

    def split(self, protocol_cfg, dataset_cfg, data_root, source, few):
        from promptlab.data.base_novel import subsample_classes
        from promptlab.protocols.base import ProtocolData, eval_sets

        train = subsample_classes(few, "base")
        return ProtocolData(train_items=train.train, train_classnames=train.classnames,
                            eval_sets=eval_sets(source, dataset_cfg["name"], ["all"]), notes=list(few.notes),
                            source_splits=source, val_items=train.val)

    def metrics(self, evaluations):
        from promptlab.protocols.base import accuracies, require

        (acc,) = require(accuracies(evaluations), self.name, "all")
        return {"all_acc": acc}

    def values(self, record):
        from promptlab.protocols.base import record_metric

        return {"all": record_metric(record, "all_acc")}

    def value_columns(self, values):
        return ["all"]


@pytest.fixture
def base_to_all(tmp_path: Path):
    """BaseToAll registered, and its YAML (conf/protocol/base_to_all.yaml) in a config folder on the search
    path; unregistered afterwards."""
    conf = tmp_path / "conf"
    (conf / "protocol").mkdir(parents=True)
    (conf / "protocol" / "base_to_all.yaml").write_text("# Train on the base half, test among all classes.\n"
                                                        "name: base_to_all\ntargets: {}\n")
    register_protocol(BaseToAll)
    try:
        yield f"hydra.searchpath=[file://{conf}]"
    finally:
        unregister_protocol("base_to_all")


def _record(protocol: str, dataset: str, method: str, seed: int, metrics: dict) -> dict:
    from promptlab.results.records import make_record

    summary = {"protocol": protocol, "dataset": dataset, "method": method, "seed": seed, "shots": 2}
    return make_record(f"/runs/{protocol}/{dataset}/{method}/{seed}", status="complete", summary=summary,
                       metrics=metrics)


def test_a_fifth_protocol_is_one_class_and_one_yaml(base_to_all: str, tmp_path: Path) -> None:
    from promptlab.config import compose
    from promptlab.results.table import AVERAGE, build_tables
    from tests.dataset_fixtures import build_fixture, fixture_config

    assert protocol_names() == (*SHIPPED, "base_to_all")  # no declared order: after the shipped ones
    cfg = compose([base_to_all, "protocol=base_to_all", "dataset=oxford_pets", f"paths.data_root={tmp_path}"])
    assert cfg.protocol.name == "base_to_all"
    protocol = get_protocol(cfg.protocol.name)
    assert isinstance(protocol, BaseToAll)

    # The run's data, as the engine builds it from the composed protocol node.
    expected = build_fixture("oxford_pets", tmp_path / "data", counts={"train": 4, "val": 2, "test": 3})
    data = protocol.build_data(cfg.protocol, fixture_config("oxford_pets", expected), tmp_path / "data", 2, 1,
                               tmp_path / "selections")
    n_classes = len(expected.classnames)
    assert len(data.train_classnames) == -(-n_classes // 2)  # the base half
    (all_classes,) = data.eval_sets
    assert all_classes.classnames == expected.classnames and len(all_classes.items) == 3 * n_classes

    # A training run with it, in process, as promptlab-train runs one (tiny toy world, random tiny CLIP).
    from promptlab import train
    from promptlab.results.records import find_records
    from tests.runs import compose_cfg, tiny_overrides, top1_metrics

    (tmp_path / "run").mkdir()
    done = train.run(compose_cfg([base_to_all, "protocol=base_to_all", "method=coop", "method.optim.epochs=1",
                                  *tiny_overrides(tmp_path / "run")]))
    assert done["status"] == "complete" and done["summary"]["protocol"] == "base_to_all"
    assert top1_metrics(done["metrics"]) == {"all_acc"}
    (run_record,) = find_records([tmp_path / "run" / "outputs"])
    assert run_record["summary"]["dataset"] == "toyworld"

    # Records of it go into their own table, after the shipped protocols' tables, rows in the tables' order.
    accs = {("oxford_pets", "coop"): (50.0, 60.0), ("caltech101", "coop"): (70.0, 80.0),
            ("oxford_pets", "zeroshot"): (40.0, 40.0), ("caltech101", "zeroshot"): (65.0, 65.0)}
    records = [
        _record("base_to_all", dataset, method, seed,
                protocol.metrics([{"name": "all", "n_correct": int(acc), "n_images": 100}]))
        for (dataset, method), per_seed in accs.items() for seed, acc in enumerate(per_seed, start=1)
    ]
    records += [run_record, _record("fewshot", "dtd", "coop", 1, {"acc": 55.0}),
                _record("base2novel", "dtd", "coop", 1, {"base_acc": 80.0, "novel_acc": 60.0, "hm": 68.6})]
    tables = build_tables(reversed(records))
    assert [t.protocol for t in tables] == ["base2novel", "fewshot", "base_to_all"]
    table = tables[-1]
    assert table.value_columns == ["all"] and table.title_of("all") == "All"
    assert [(r.keys["dataset"], r.keys["method"]) for r in table.rows if not r.is_average] == [
        ("caltech101", "zeroshot"), ("caltech101", "coop"), ("oxford_pets", "zeroshot"), ("oxford_pets", "coop"),
        ("toyworld", "coop")]  # the papers' datasets first, then A-Z; methods in the papers' order
    coop = table.find(dataset="oxford_pets", method="coop").cells["all"]
    assert coop.mean == statistics.fmean([50.0, 60.0]) and coop.n == 2
    averages = {r.keys["method"]: r.cells["all"].mean for r in table.rows if r.is_average}
    toyworld = run_record["metrics"]["all_acc"]
    assert table.find(dataset="toyworld", method="coop").cells["all"].mean == toyworld
    assert averages == {"zeroshot": statistics.fmean([65.0, 40.0]), "coop": statistics.fmean([75.0, 55.0, toyworld])}
    # The Average rows (the protocol's average_rows) come last, zero-shot's over the 2 datasets it ran on.
    assert [r.is_average for r in table.rows] == [False] * 5 + [True] * 2
    assert all(r.labels["dataset"].startswith(AVERAGE) for r in table.rows[-2:])
    assert "All" in table.to_markdown()

    # What the protocol declares reaches the compose-time checks: it tests on classes it did not train on.
    with pytest.raises(ConfigError, match="csc=true with protocol=base_to_all") as info:
        compose([base_to_all, "protocol=base_to_all", "method=coop", "method.learner.csc=true"])
    assert "Use protocol=fewshot" in str(info.value)

    unregister_protocol("base_to_all")
    assert protocol_names() == SHIPPED
    with pytest.raises(ConfigError, match="unknown protocol 'base_to_all'") as info:
        compose([base_to_all, "protocol=base_to_all"])
    assert all(name in str(info.value) for name in SHIPPED)
