"""Published numbers as data, and the tables that put runs next to them: the data agree with themselves (each
HM is the harmonic mean of its base and novel, each printed average the mean of its rows), every number cites
its paper and says which readable copies it was checked against (or that it is unverified), the comparison shows
run, 95 % CI, paper and difference where the settings match and nothing where they do not, marks comparisons
against unverified numbers, and few-shot sweeps get an accuracy-versus-shots figure."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import scipy.stats
from omegaconf import OmegaConf

import promptlab
import promptlab.results.published as published_module
from promptlab.methods.registry import registered_methods
from promptlab.results.cli import main as table_main
from promptlab.results.metrics import harmonic_mean
from promptlab.results.plots import is_shot_sweep, plot_table, series_axes
from promptlab.results.published import (
    CI95,
    DATA_FILES,
    DELTA,
    PAPER,
    RUN,
    UNVERIFIED,
    UNVERIFIED_MARK,
    UNVERIFIED_NOTE,
    PublishedDataError,
    checked_sources,
    compare_with_published,
    published_lookup,
    published_values,
    sources,
)
from promptlab.results.records import make_record, write_record
from promptlab.results.table import AVERAGE, Cell, build_tables

CONF = Path(promptlab.__file__).parent / "conf"
ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Rounding: each printed number is within 0.005 of its exact value, so a number recomputed from printed ones
# (a harmonic mean, a mean over datasets) may differ from the printed one by up to 0.01.
ROUNDING = 0.0101


# --------------------------------------------------------------------------- the data
def _by(protocol: str) -> dict[tuple[str, str], dict[str, float]]:
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for v in published_values(protocol):
        rows.setdefault((v.method, v.dataset), {})[v.column] = v.value
    return rows


def test_base2novel_rows_cover_the_eleven_datasets_and_the_average_of_seven_methods() -> None:
    rows = _by("base2novel")
    methods = {m for m, _ in rows}
    assert methods == {"zeroshot", "coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc"}
    for method in methods:
        assert {d for m, d in rows if m == method} == {*ELEVEN, AVERAGE}, method
        assert all(set(rows[(method, d)]) == {"base", "novel", "hm"} for d in [*ELEVEN, AVERAGE])
    # Keys are promptlab's config names, so published cells line up with the tables' rows.
    assert all((CONF / "dataset" / f"{d}.yaml").exists() for d in ELEVEN)
    assert methods <= set(registered_methods())


def test_every_published_hm_is_the_harmonic_mean_of_its_base_and_novel() -> None:
    for (method, dataset), row in _by("base2novel").items():
        assert abs(harmonic_mean(row["base"], row["novel"]) - row["hm"]) <= ROUNDING, (method, dataset)


def test_every_published_average_is_the_mean_of_its_datasets() -> None:
    """A mistyped number in any row would show here: the papers' averages were printed independently."""
    rows = _by("base2novel")
    for method in {m for m, _ in rows}:
        for column in ("base", "novel"):
            mean = statistics.fmean(rows[(method, d)][column] for d in ELEVEN)
            assert abs(mean - rows[(method, AVERAGE)][column]) <= ROUNDING, (method, column)
    for protocol in ("cross_dataset", "domain_generalization"):
        targets = _protocol_targets(protocol)
        for (method, dataset), row in _by(protocol).items():
            assert dataset == "imagenet" and set(row) - {"source", "target_mean"} == set(targets), method
            if "target_mean" in row:
                mean = statistics.fmean(row[t] for t in targets)
                assert abs(mean - row["target_mean"]) <= ROUNDING, (protocol, method)


def _protocol_targets(protocol: str) -> list[str]:
    """The target dataset names the protocol config evaluates (conf/protocol/<protocol>.yaml)."""
    defaults = OmegaConf.load(CONF / "protocol" / f"{protocol}.yaml").defaults
    keys = [key for entry in defaults if not isinstance(entry, str) for key in entry]  # "/dataset@targets.<name>"
    return [key.split("targets.", 1)[1] for key in keys if "targets." in key]


def test_every_number_cites_a_paper_table() -> None:
    known = sources()
    values = published_values()
    assert len(values) > 250
    assert all(v.citation in known and known[v.citation].paper and known[v.citation].table for v in values)
    assert {v.citation for v in values} == set(known)  # no dangling source either
    assert {(v.backbone, v.shots) for v in values} == {("ViT-B/16", 16)}


# Names the readable copies use for promptlab's method keys, and for the protocols.
_PRINTED_NAME = {"zeroshot": "CLIP", "coop": "CoOp", "cocoop": "CoCoOp", "kgcoop": "KgCoOp", "prograd": "ProGrad",
                 "maple": "MaPLe", "promptsrc": "PromptSRC"}
_PRINTED_PROTOCOL = {"base2novel": ("base-to-novel", "base-to-new"), "cross_dataset": ("cross-dataset",),
                     "domain_generalization": ("domain-generalisation",)}


def _data_rows(name: str) -> list[dict[str, str]]:
    """The raw rows of a shipped data file, read independently of the loader."""
    text = resources.files("promptlab.results").joinpath("published", name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#")))


def test_every_row_says_where_it_was_checked() -> None:
    copies = checked_sources()
    used = set()
    for protocol, name in DATA_FILES.items():
        for row in _data_rows(name):
            assert row.get("checked"), (name, row)  # every row has a value: the copies, or "unverified"
            if row["checked"] == UNVERIFIED:
                continue
            keys = row["checked"].split(";")
            used.update(keys)
            for key in keys:
                # A copy can only confirm a row it reprints: the method and the protocol are named in its contents.
                contents = copies[key].contents
                assert _PRINTED_NAME[row["method"]] in contents, (name, row["method"], key)
                assert any(p in contents for p in _PRINTED_PROTOCOL[protocol]), (name, row["method"], key)
    assert used == set(copies)  # no copy listed that confirms nothing
    assert all(c.copy and c.location for c in copies.values())
    # The loader carries the rows' keys to every number: verified values name their copies, the rest none.
    values = published_values()
    assert {k for v in values for k in v.checked} == used
    assert all(v.verified == bool(v.checked) for v in values)


def _edit_rows(monkeypatch: pytest.MonkeyPatch, name: str,
               edit: Callable[[dict[str, str]], dict[str, str]]) -> None:
    """Make the loader see `name`'s rows changed by `edit`, with fresh caches before and after the test."""
    original = published_module._rows

    def rows(file: str) -> list[dict[str, str]]:
        found = original(file)
        return [edit(dict(r)) for r in found] if file == name else found

    monkeypatch.setattr(published_module, "_rows", rows)
    published_module._all_values.cache_clear()
    published_module.checked_sources.cache_clear()


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch):
    """Clear the loader's caches after a test that fed it edited rows (before `monkeypatch` restores `_rows`)."""
    yield
    published_module._all_values.cache_clear()
    published_module.checked_sources.cache_clear()


@pytest.mark.parametrize(("checked", "said"), [("", "no `checked` value"), ("nosuchcopy", "not in published/"),
                                               ("transagent;nosuchcopy", "not in published/")])
def test_a_row_without_a_known_check_is_refused(monkeypatch, fresh_cache, checked: str, said: str) -> None:
    _edit_rows(monkeypatch, "base2novel.csv",
               lambda r: {**r, "checked": checked} if (r["method"], r["dataset"]) == ("coop", "dtd") else r)
    with pytest.raises(PublishedDataError, match=said):
        published_values()


# --------------------------------------------------------------------------- synthetic records
def _write(run_dir: Path, protocol: str, metrics: dict, evaluations: list | None = None, **summary) -> None:
    summary = {"protocol": protocol, "backbone": "ViT-B/16", "shots": 16, **summary}
    write_record(run_dir, make_record(run_dir, status="complete", summary=summary, config_hash="h",
                                      metrics=metrics, evaluations=evaluations or []))


def _b2n(root: Path, runs: dict[tuple[str, str], list[tuple[float, float]]], **summary) -> Path:
    job = 0
    for (dataset, method), per_seed in runs.items():
        for seed, (base, novel) in enumerate(per_seed, start=1):
            metrics = {"base_acc": base, "novel_acc": novel, "hm": harmonic_mean(base, novel)}
            _write(root / str(job), "base2novel", metrics, dataset=dataset, method=method, seed=seed,
                   **summary)
            job += 1
    return root


def _records(root: Path) -> list[dict]:
    from promptlab.results.records import scan_records

    return list(scan_records([root]).complete)


def _line(table, line: str, average: bool = False, **keys):
    return table.find(average=average, line=line, **keys)


def test_ci95_is_students_t_interval_of_the_mean() -> None:
    values = [96.0, 94.0, 98.5]
    cell = Cell(statistics.fmean(values), statistics.pstdev(values), len(values))
    low, high = scipy.stats.t.interval(0.95, df=2, loc=statistics.fmean(values),
                                       scale=statistics.stdev(values) / math.sqrt(3))
    assert cell.ci95 == pytest.approx((high - low) / 2, rel=1e-12)
    # By hand: t(0.975, 2) = 4.302653 (a t table), s = 2.25462 (sample std), n = 3.
    assert cell.ci95 == pytest.approx(4.302653 * statistics.stdev(values) / math.sqrt(3), rel=1e-6)
    assert Cell(90.0, 0.0, 1).ci95 is None and Cell(90.0, None, 3).ci95 is None  # one run; a derived number


def test_comparison_shows_run_ci_paper_and_difference(tmp_path: Path) -> None:
    runs = {("dtd", "coop"): [(80.0, 40.0), (78.0, 44.0), (79.0, 45.5)],
            ("dtd", "cocoop"): [(75.0, 55.0), (76.5, 57.0), (77.0, 56.0)],
            ("eurosat", "coop"): [(90.0, 50.0), (91.0, 52.0), (92.0, 54.0)]}
    root = _b2n(tmp_path / "sweep", runs)
    records = _records(root)
    (table,) = build_tables(records)
    compared = compare_with_published(table, records)
    paper = published_lookup("base2novel")
    for method, per_seed in (("coop", runs[("dtd", "coop")]), ("cocoop", runs[("dtd", "cocoop")])):
        bases = [b for b, _ in per_seed]
        run = _line(compared, RUN, dataset="dtd", method=method)
        assert run.cells["base"].mean == pytest.approx(statistics.fmean(bases))
        ci = _line(compared, CI95, dataset="dtd", method=method)
        assert ci.cells["base"].mean == pytest.approx(
            scipy.stats.t.ppf(0.975, 2) * statistics.stdev(bases) / math.sqrt(3))
        printed = _line(compared, PAPER, dataset="dtd", method=method)
        delta = _line(compared, DELTA, dataset="dtd", method=method)
        for column in ("base", "novel", "hm"):
            assert printed.cells[column].mean == paper[("dtd", method, column)].value
            assert delta.cells[column].mean == pytest.approx(
                run.cells[column].mean - paper[("dtd", method, column)].value)
    markdown = compared.to_markdown()
    assert "Conditional Prompt Learning" in markdown and "Table 1" in markdown  # the citation
    assert f"| DTD | CoOp | {PAPER} |" in markdown or f"| dtd | coop | {PAPER} |" in markdown
    # Two datasets are not the paper's eleven: the Average rows are shown but not compared.
    assert not [r for r in compared.rows if r.is_average and r.keys["line"] in (PAPER, DELTA)]
    assert any("not compared with the paper's average" in note for note in compared.notes)


def test_average_row_is_compared_when_the_sweep_has_the_papers_datasets(tmp_path: Path) -> None:
    runs = {(d, "cocoop"): [(70.0 + i, 60.0 + i / 2), (71.0 + i, 61.0)] for i, d in enumerate(ELEVEN)}
    records = _records(_b2n(tmp_path / "sweep", runs))
    (table,) = build_tables(records)
    compared = compare_with_published(table, records)
    run = _line(compared, RUN, average=True, method="cocoop")
    delta = _line(compared, DELTA, average=True, method="cocoop")
    paper = published_lookup("base2novel")[(AVERAGE, "cocoop", "hm")].value
    assert delta.cells["hm"].mean == pytest.approx(run.cells["hm"].mean - paper)


def test_other_backbone_or_shots_are_not_compared(tmp_path: Path) -> None:
    runs = {("dtd", "coop"): [(80.0, 40.0), (78.0, 44.0)]}
    for name, summary, said in (("toy", {"backbone": "ToyCLIP"}, "toyclip 16 shots"),
                                ("four", {"shots": 4}, "vitb16 4 shots")):
        records = _records(_b2n(tmp_path / name, runs, **summary))
        (table,) = build_tables(records)
        compared = compare_with_published(table, records)
        assert {r.keys["line"] for r in compared.rows} == {RUN, CI95}
        assert any("not compared" in note and said in note for note in compared.notes), compared.notes


def test_transfer_tables_are_compared_column_by_column(tmp_path: Path) -> None:
    targets = _protocol_targets("domain_generalization")
    root = tmp_path / "dg"
    for seed, shift in enumerate((0.0, 1.0, -0.5), start=1):
        accs = {"imagenet": 71.0 + shift, **{t: 50.0 + i + shift for i, t in enumerate(targets)}}
        metrics = {f"{d}_acc": a for d, a in accs.items()}
        metrics["target_mean_acc"] = statistics.fmean(accs[t] for t in targets)
        evaluations = [{"name": d, "dataset": d, "acc": a, "n_correct": 1, "n_images": 1} for d, a in accs.items()]
        _write(root / str(seed), "domain_generalization", metrics, evaluations, dataset="imagenet", method="coop",
               seed=seed)
    records = _records(root)
    (table,) = build_tables(records)
    compared = compare_with_published(table, records)
    paper = published_lookup("domain_generalization")
    run, delta = _line(compared, RUN, method="coop"), _line(compared, DELTA, method="coop")
    for column in ("source", *targets):
        published = paper[("imagenet", "coop", column)].value
        assert delta.cells[column].mean == pytest.approx(run.cells[column].mean - published)
    assert "target_mean" not in delta.cells  # CoCoOp's Table 3 prints no average for CoOp
    assert "Table 3" in compared.to_markdown()


def test_comparison_marks_lines_against_unverified_numbers(tmp_path: Path, monkeypatch, fresh_cache) -> None:
    # The shipped data decide nothing here: coop on dtd is made unverified, cocoop on dtd verified.
    def edit(row: dict[str, str]) -> dict[str, str]:
        if row["dataset"] == "dtd" and row["method"] in ("coop", "cocoop"):
            return {**row, "checked": UNVERIFIED if row["method"] == "coop" else next(iter(checked_sources()))}
        return row

    _edit_rows(monkeypatch, "base2novel.csv", edit)
    runs = {("dtd", "coop"): [(80.0, 40.0), (78.0, 44.0)], ("dtd", "cocoop"): [(75.0, 55.0), (76.5, 57.0)]}
    records = _records(_b2n(tmp_path / "sweep", runs))
    (table,) = build_tables(records)
    compared = compare_with_published(table, records)
    for line in (PAPER, DELTA):
        assert _line(compared, line, dataset="dtd", method="coop").labels["line"] == line + UNVERIFIED_MARK
        assert _line(compared, line, dataset="dtd", method="cocoop").labels["line"] == line
    for line in (RUN, CI95):
        assert _line(compared, line, dataset="dtd", method="coop").labels["line"] == line
    assert UNVERIFIED_NOTE in compared.notes
    markdown, csv_text = compared.to_markdown(), compared.to_csv()
    assert f"| dtd | coop | {PAPER}{UNVERIFIED_MARK} |" in markdown and f"| dtd | cocoop | {PAPER} |" in markdown
    assert f"dtd,coop,{DELTA}{UNVERIFIED_MARK}," in csv_text

    # Only verified numbers compared: no mark, no note, and the copies they were checked against are named.
    records = _records(_b2n(tmp_path / "verified", {("dtd", "cocoop"): runs[("dtd", "cocoop")]}))
    (table,) = build_tables(records)
    compared = compare_with_published(table, records)
    assert UNVERIFIED_NOTE not in compared.notes
    assert UNVERIFIED_MARK not in compared.to_markdown().split("\n- ")[0]
    key = next(iter(checked_sources()))
    assert any(note.startswith(f"paper numbers checked against [{key}]") for note in compared.notes)


def test_cli_published_writes_and_prints_the_comparison(tmp_path: Path, capsys) -> None:
    root = _b2n(tmp_path / "sweep", {("eurosat", "kgcoop"): [(85.0, 60.0), (86.0, 63.0), (84.0, 66.0)]})
    assert table_main([str(root), "--published"]) == 0
    text = (root / "table_base2novel_published.md").read_text()
    assert PAPER in text and DELTA in text and "Knowledge-guided" in text
    assert "published comparison written to" in capsys.readouterr().out
    csv_text = (root / "table_base2novel_published.csv").read_text()
    assert csv_text.splitlines()[0].startswith("dataset,method,line,base_mean,base_std,base_ci95")


def test_top5_and_mean_per_class_columns_beside_top1(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for seed, (b5, n5) in enumerate(((99.0, 97.0), (98.0, 96.0)), start=1):
        metrics = {"base_acc": 80.0, "novel_acc": 70.0, "hm": harmonic_mean(80.0, 70.0), "base_top5_acc": b5,
                   "novel_top5_acc": n5, "base_mean_class_acc": 79.0}
        _write(root / str(seed), "base2novel", metrics, dataset="dtd", method="coop", seed=seed)
    (plain,) = build_tables(_records(root))
    assert plain.value_columns == ["base", "novel", "hm"]  # the papers' columns by default
    (table,) = build_tables(_records(root), all_metrics=True)  # promptlab-table --all-metrics
    assert table.value_columns == ["base", "novel", "hm", "base_mean_class_acc", "base_top5_acc", "novel_top5_acc"]
    assert table.title_of("base_top5_acc") == "Base top-5"
    assert table.title_of("base_mean_class_acc") == "Base mean/class"
    row = table.find(dataset="dtd", method="coop")
    assert row.cells["base_top5_acc"].mean == pytest.approx(98.5)
    assert "Base top-5" in table.to_markdown()


def test_fewshot_sweep_gets_an_accuracy_versus_shots_figure(tmp_path: Path) -> None:
    root = tmp_path / "fewshot"
    job = 0
    for dataset in ("dtd", "eurosat"):
        for shots in (1, 2, 4, 8, 16):
            for seed in (1, 2):
                acc = 40.0 + 5 * math.log2(shots) + seed
                _write(root / str(job), "fewshot", {"acc": acc}, dataset=dataset, method="coop", seed=seed,
                       shots=shots)
                job += 1
        _write(root / str(job), "fewshot", {"acc": 45.0}, dataset=dataset, method="zeroshot", seed=1, shots=16)
        job += 1
    (table,) = build_tables(_records(root))
    assert is_shot_sweep(table)
    assert series_axes(table) == []
    path = plot_table(table, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    # One shot count only: the grouped bars, as before.
    (single,) = build_tables([r for r in _records(root) if r["summary"]["shots"] == 16])
    assert not is_shot_sweep(single)


def test_a_key_that_follows_the_shot_count_stays_one_curve_and_a_real_axis_makes_more(tmp_path: Path) -> None:
    """Epochs by shots (the reference's schedule) split the table's rows with the shots but draw one curve;
    n_ctx swept at each shot count is a further axis: one curve per value."""
    root = tmp_path / "fewshot"
    job = 0
    for shots in (1, 4, 16):
        epochs = {1: 50, 4: 100, 16: 200}[shots]
        _write(root / str(job), "fewshot", {"acc": 50.0 + shots}, dataset="dtd", method="clip_adapter", seed=1,
               shots=shots, epochs=epochs)
        job += 1
        for n_ctx in (4, 16):
            _write(root / str(job), "fewshot", {"acc": 40.0 + shots + n_ctx}, dataset="dtd", method="coop", seed=1,
                   shots=shots, epochs=200, n_ctx=n_ctx)
            job += 1
    (table,) = build_tables(_records(root))
    assert {"shots", "epochs", "n_ctx"} <= set(table.split_columns)
    assert series_axes(table) == ["n_ctx"]
    assert plot_table(table, tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC
