"""Aggregation of run records into tables, renderers, figures, the promptlab-table CLI, the Hydra
callback and W&B logging, on synthetic metrics.json files written to temporary sweep dirs."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from promptlab.results.callback import AggregateOnMultirunEnd, wandb_settings
from promptlab.results.cli import aggregate, main
from promptlab.results.metrics import harmonic_mean
from promptlab.results.records import error_record, find_records, make_record, write_record
from promptlab.results.table import build_tables, latex_escape, to_csv, to_latex, to_markdown

VENV_BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Per-seed (base, novel) accuracies of seeds 1, 2, 3. Chosen so that the mean of the per-seed HMs,
# the HM of the seed means and the HM of the dataset averages all differ.
B2N = {
    ("toyworld", "zeroshot"): [(86.0, 88.0)] * 3,
    ("toyworld", "coop"): [(96.0, 78.0), (94.0, 70.0), (98.0, 86.0)],
    ("toyworld", "cocoop"): [(91.0, 84.0), (90.0, 85.0), (92.0, 86.0)],
    ("oxford_pets", "zeroshot"): [(70.0, 75.0)] * 3,
    ("oxford_pets", "coop"): [(90.0, 50.0), (88.0, 40.0), (92.0, 60.0)],
    ("oxford_pets", "cocoop"): [(85.0, 70.0), (84.0, 72.0), (86.0, 74.0)],
}


def _write(run_dir: Path, protocol: str, metrics: dict, evaluations: list | None = None, **summary) -> None:
    summary = {"protocol": protocol, "backbone": "toyclip", "shots": 16, "precision": "32", **summary}
    write_record(run_dir, make_record(run_dir, status="complete", summary=summary, config_hash="h",
                                      metrics=metrics, evaluations=evaluations or []))


def _b2n_sweep(root: Path, extra: dict | None = None) -> Path:
    """2 datasets x 3 methods x 3 seeds as Hydra lays them out (sweep/<job>/metrics.json) + 1 failed job."""
    job = 0
    for (dataset, method), per_seed in B2N.items():
        for seed, (base, novel) in enumerate(per_seed, start=1):
            display = {"dataset_display": "Oxford_Pets"} if dataset == "oxford_pets" else {}
            n_ctx = 0 if method == "zeroshot" else 4
            _write(root / str(job), "base2novel",
                   {"base_acc": base, "novel_acc": novel, "hm": harmonic_mean(base, novel)},
                   dataset=dataset, method=method, seed=seed, n_ctx=n_ctx, **display, **(extra or {}))
            job += 1
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as exc:
        failed = error_record(root / str(job), exc, summary={"protocol": "base2novel", "method": "kgcoop"})
    write_record(root / str(job), failed)
    return root


def _b2n_table(root: Path):
    (table,) = build_tables(find_records([root]))
    return table


def test_base2novel_rows_seeds_and_mean_std(tmp_path: Path) -> None:
    table = _b2n_table(_b2n_sweep(tmp_path))
    assert table.protocol == "base2novel"
    assert len(table.rows) == 6 + 3  # dataset x method, then one Average row per method
    # CoOp's datasets in the papers' order first, others after; methods in the papers' order.
    assert [r.keys["dataset"] for r in table.rows[:6]] == ["oxford_pets"] * 3 + ["toyworld"] * 3
    assert [r.keys["method"] for r in table.rows[:3]] == ["zeroshot", "coop", "cocoop"]
    assert all(r.n_seeds == (3,) for r in table.rows if not r.is_average)
    # kgcoop only failed: it must not appear.
    assert "kgcoop" not in {r.keys["method"] for r in table.rows}

    row = table.find(dataset="toyworld", method="coop")
    assert row.cells["base"].mean == pytest.approx(96.0)
    # population std (ddof=0) as CoOp's parse_test_res.py: sqrt((0 + 4 + 4) / 3) = 1.633, not 2.0
    assert row.cells["base"].std == pytest.approx(1.63299, abs=1e-4)
    assert row.cells["novel"].mean == pytest.approx(78.0)
    assert row.cells["novel"].std == pytest.approx(statistics.pstdev([78.0, 70.0, 86.0]))
    per_seed_hm = [harmonic_mean(b, n) for b, n in B2N[("toyworld", "coop")]]
    assert row.cells["hm"].mean == pytest.approx(statistics.fmean(per_seed_hm))
    assert row.cells["hm"].std == pytest.approx(statistics.pstdev(per_seed_hm))
    # The HM column is the mean of per-seed HMs, which here differs from the HM of the means.
    assert abs(row.cells["hm"].mean - harmonic_mean(96.0, 78.0)) > 0.05
    assert row.labels["dataset"] == "toyworld"
    assert table.find(dataset="oxford_pets", method="coop").labels["dataset"] == "Oxford_Pets"


def test_average_row_is_hm_of_averaged_base_and_novel(tmp_path: Path) -> None:
    table = _b2n_table(_b2n_sweep(tmp_path))
    average = table.find(average=True, method="coop")
    assert average.labels["dataset"] == "Average"
    assert average.n_seeds == (3, 3)
    avg_base = statistics.fmean([96.0, 90.0])  # per-dataset means of the base accuracies
    avg_novel = statistics.fmean([78.0, 50.0])
    assert average.cells["base"].mean == pytest.approx(avg_base)
    assert average.cells["novel"].mean == pytest.approx(avg_novel)
    assert average.cells["hm"].mean == pytest.approx(harmonic_mean(avg_base, avg_novel))
    mean_of_row_hms = statistics.fmean(
        table.find(dataset=d, method="coop").cells["hm"].mean for d in ("toyworld", "oxford_pets"))
    assert abs(average.cells["hm"].mean - mean_of_row_hms) > 0.5
    assert average.cells["base"].std is None  # a derived number, shown without ± std
    assert table.rows[-3:] == [table.find(average=True, method=m) for m in ("zeroshot", "coop", "cocoop")]


def test_only_keys_that_split_rows_become_columns(tmp_path: Path) -> None:
    _b2n_sweep(tmp_path / "s16")
    _write(tmp_path / "s1" / "0", "base2novel", {"base_acc": 80.0, "novel_acc": 60.0},
           dataset="toyworld", method="coop", seed=1, shots=1, n_ctx=4)
    _write(tmp_path / "s1" / "1", "base2novel", {"base_acc": 82.0, "novel_acc": 64.0},
           dataset="toyworld", method="coop", seed=2, shots=1, n_ctx=4)
    table = _b2n_table(tmp_path)
    # shots varies inside (toyworld, coop): it splits rows; n_ctx varies only between methods: no column.
    assert table.label_columns == ["dataset", "method", "shots"]
    one_shot = table.find(dataset="toyworld", method="coop", shots=1)
    assert one_shot.n_seeds == (2,)
    assert one_shot.cells["base"].mean == pytest.approx(81.0)
    assert table.find(dataset="toyworld", method="coop", shots=16).cells["base"].mean == pytest.approx(96.0)
    # Averages are kept apart per shots value; shots=1 exists on one of the two datasets only.
    assert table.find(average=True, method="coop", shots=16).labels["dataset"] == "Average"
    partial = table.find(average=True, method="coop", shots=1)
    assert partial.labels["dataset"] == "Average (1 of 2)"
    assert any("some datasets have no runs" in n for n in table.notes)
    assert any("rows split by the summary keys that vary within a dataset and method: shots" in n for n in table.notes)
    # Keys that do not vary (backbone, precision) do not become columns.
    assert "backbone" not in table.label_columns


def test_markdown_csv_latex_content(tmp_path: Path) -> None:
    table = _b2n_table(_b2n_sweep(tmp_path))
    markdown = to_markdown(table)
    assert "| Dataset | Method | Base | Novel | HM | Seeds |" in markdown
    assert "| toyworld | coop | 96.00 ± 1.63 | 78.00 ± 6.53 |" in markdown
    avg_hm = harmonic_mean(93.0, 64.0)
    assert f"| Average | coop | 93.00 | 64.00 | {avg_hm:.2f} | 3 |" in markdown
    assert "population std" in markdown and "harmonic mean of those two averages" in markdown

    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == 9
    coop = next(r for r in rows if r["dataset"] == "toyworld" and r["method"] == "coop")
    assert float(coop["base_mean"]) == pytest.approx(96.0)
    assert float(coop["base_std"]) == pytest.approx(1.633, abs=1e-3)
    assert coop["n_seeds"] == "3"
    average = next(r for r in rows if r["dataset"] == "Average" and r["method"] == "coop")
    assert float(average["hm_mean"]) == pytest.approx(avg_hm, abs=1e-4)
    assert average["hm_std"] == ""

    latex = to_latex(table)
    assert r"\toprule" in latex and r"\bottomrule" in latex and latex.count(r"\midrule") == 2
    assert r"Oxford\_Pets & coop & 90.00 $\pm$ 1.63" in latex
    assert "Oxford_Pets" not in latex
    assert latex_escape("50% of a_b & c") == r"50\% of a\_b \& c"


def test_figure_is_a_png(tmp_path: Path) -> None:
    paths = aggregate([_b2n_sweep(tmp_path / "sweep")], tmp_path / "out")
    png = paths["base2novel.png"]
    assert png == tmp_path / "out" / "table_base2novel.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "table_base2novel.md", "table_base2novel.csv", "table_base2novel.tex", "table_base2novel.png",
        "skipped_runs.txt"}
    assert "RuntimeError: CUDA out of memory" in paths["skipped_runs"].read_text()


def _transfer_sweep(root: Path, protocol: str, source: str, targets: list[str], method_offsets: dict) -> None:
    job = 0
    for method, offset in method_offsets.items():
        for seed in (1, 2):
            accs = {source: 70.0 + offset + seed}
            accs.update({t: 50.0 + offset + i * 5 + seed for i, t in enumerate(targets)})
            metrics = {f"{d}_acc": a for d, a in accs.items()}
            metrics["target_mean_acc"] = statistics.fmean(accs[t] for t in targets)
            evaluations = [{"name": d, "dataset": d, "subset": "all", "acc": a} for d, a in accs.items()]
            _write(root / str(job), protocol, metrics, evaluations, dataset=source, method=method, seed=seed)
            job += 1


def test_cross_dataset_table(tmp_path: Path) -> None:
    _transfer_sweep(tmp_path, "cross_dataset", "imagenet", ["caltech101", "dtd", "euro_sat"],
                    {"coop": 0.0, "cocoop": 4.0})
    (table,) = build_tables(find_records([tmp_path]))
    assert table.protocol == "cross_dataset"
    assert table.value_columns == ["source", "caltech101", "dtd", "euro_sat", "target_mean"]
    assert [r.keys["method"] for r in table.rows] == ["coop", "cocoop"]
    assert not any(r.is_average for r in table.rows)
    cocoop = table.find(method="cocoop")
    assert cocoop.cells["source"].mean == pytest.approx(75.5)
    assert cocoop.cells["source"].std == pytest.approx(0.5)
    assert cocoop.cells["dtd"].mean == pytest.approx(60.5)
    assert cocoop.cells["target_mean"].mean == pytest.approx(60.5)
    markdown = to_markdown(table)
    assert "| Dataset | Method | Source | caltech101 | dtd | euro_sat | Target avg. | Seeds |" in markdown
    cells = ["71.50 ± 0.50", "51.50 ± 0.50", "56.50 ± 0.50", "61.50 ± 0.50", "56.50 ± 0.50"]
    assert f"| imagenet | coop | {' | '.join(cells)} | 2 |" in markdown
    assert r"euro\_sat" in to_latex(table)
    paths = aggregate([tmp_path], tmp_path / "out")
    assert paths["cross_dataset.png"].read_bytes()[:8] == PNG_MAGIC


def test_fewshot_and_domain_generalization_tables_side_by_side(tmp_path: Path) -> None:
    for i, (dataset, method, acc) in enumerate([("dtd", "coop", 60.0), ("dtd", "zeroshot", 44.0),
                                                 ("eurosat", "coop", 80.0), ("eurosat", "zeroshot", 48.0)]):
        _write(tmp_path / "fs" / str(i), "fewshot", {"acc": acc}, dataset=dataset, method=method, seed=1)
    _transfer_sweep(tmp_path / "dg", "domain_generalization", "imagenet",
                    ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"], {"coop": 0.0})
    tables = build_tables(find_records([tmp_path]))
    assert [t.protocol for t in tables] == ["fewshot", "domain_generalization"]
    fewshot = tables[0]
    assert fewshot.find(average=True, method="coop").cells["acc"].mean == pytest.approx(70.0)
    assert fewshot.find(average=True, method="zeroshot").cells["acc"].mean == pytest.approx(46.0)
    assert tables[1].value_columns[1:] == ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r",
                                           "target_mean"]
    paths = aggregate([tmp_path], tmp_path / "out")
    assert {"fewshot.md", "fewshot.png", "domain_generalization.csv", "domain_generalization.png"} <= set(
        paths)


def test_cli_writes_into_the_sweep_dir_and_prints(tmp_path: Path, capsys) -> None:
    sweep = _b2n_sweep(tmp_path / "sweep")
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "base2novel" in out and "96.00 ± 1.63" in out and "Average" in out
    assert "1 run(s) left out" in out and "RuntimeError: CUDA out of memory" in out
    assert f"figure: {sweep / 'table_base2novel.png'}" in out
    assert "| toyworld | coop |" in (sweep / "table_base2novel.md").read_text()

    assert main([str(sweep / "0"), str(sweep / "1"), "--out", str(tmp_path / "two"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    markdown = (tmp_path / "two" / "table_base2novel.md").read_text()
    assert "| toyworld | zeroshot | 86.00 ± 0.00 | 88.00 ± 0.00 |" in markdown


def test_cli_exit_codes_without_complete_records(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no complete run record" in capsys.readouterr().err

    try:
        raise ValueError("bad split")
    except ValueError as exc:
        write_record(tmp_path / "only_failed" / "0", error_record(tmp_path / "only_failed" / "0", exc))
    assert main([str(tmp_path / "only_failed")]) == 1
    err = capsys.readouterr().err
    assert "1 failed or incomplete run(s)" in err and "ValueError: bad split" in err
    assert not (tmp_path / "only_failed" / "table_base2novel.md").exists()

    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_in_subprocess(tmp_path: Path) -> None:
    sweep = _b2n_sweep(tmp_path / "sweep")
    done = subprocess.run([str(VENV_BIN / "promptlab-table"), str(sweep), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "96.00 ± 1.63" in done.stdout
    assert (tmp_path / "o" / "table_base2novel.tex").read_text().startswith("% promptlab base2novel")
    (tmp_path / "nothing").mkdir()
    done = subprocess.run([str(VENV_BIN / "promptlab-table"), str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no complete run record" in done.stderr


# --------------------------------------------------------------------------- Hydra callback and W&B


def test_callback_aggregates_completed_runs_and_never_raises(tmp_path: Path, monkeypatch, capsys) -> None:
    sweep = _b2n_sweep(tmp_path / "sweep")
    callback = AggregateOnMultirunEnd()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "logger": {"name": "csv"}})
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)
    assert (sweep / "table_base2novel.md").is_file()
    assert "RuntimeError: CUDA out of memory" in capsys.readouterr().out

    # Nothing complete, a missing sweep dir: reported, not raised.
    (tmp_path / "bad").mkdir()
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "bad")}}}))
    assert "nothing to tabulate" in capsys.readouterr().out
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}}))

    # With a wandb logger the tables go to W&B (captured here; the real logging is tested below).
    calls = []
    monkeypatch.setattr("promptlab.results.wandb_log.log_tables_to_wandb",
                        lambda tables, figures, project, group, mode, config, dir, files: calls.append(
                            (tables, figures, project, group, mode, files)))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}},
                               "logger": {"_target_": "lightning.pytorch.loggers.WandbLogger",
                                          "project": "toy", "offline": True}})
    AggregateOnMultirunEnd(quiet=True).on_multirun_end(config)
    ((tables, figures, project, group, mode, files),) = calls
    assert [t.protocol for t in tables] == ["base2novel"]
    assert {f.name for f in files} >= {"table_base2novel.md", "table_base2novel.csv", "table_base2novel.tex"}
    assert figures == [sweep / "table_base2novel.png"]
    assert (project, group, mode) == ("toy", "sweep", "offline")


def test_wandb_settings_detection() -> None:
    assert wandb_settings(OmegaConf.create({"logger": None})) is None
    assert wandb_settings(OmegaConf.create({"logger": {"name": "csv", "save_dir": "x"}})) is None
    nested = OmegaConf.create({"logger": {"wandb": {"_target_": "lightning.pytorch.loggers.wandb.WandbLogger",
                                                    "project": "pl", "group": "g1",
                                                    "save_dir": "${hydra:runtime.output_dir}"}}})
    assert wandb_settings(nested) == {"project": "pl", "group": "g1", "mode": None}
    flat = OmegaConf.create({"logger": {"name": "wandb", "mode": "disabled"}})
    assert wandb_settings(flat) == {"project": "promptlab", "group": None, "mode": "disabled"}


def test_log_tables_to_wandb_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    from promptlab.results.wandb_log import log_tables_to_wandb

    paths = aggregate([_b2n_sweep(tmp_path / "sweep")], tmp_path / "out")
    table = build_tables(find_records([tmp_path / "sweep"]))[0]
    files_dir = log_tables_to_wandb([table], [paths["base2novel.png"]], project="toy", group="sweep-1")
    assert "offline-run" in str(files_dir)

    (table_file,) = (files_dir / "media" / "table").rglob("*.table.json")
    logged = json.loads(table_file.read_text())
    columns, data = table.tabular()
    assert logged["columns"] == columns
    assert len(logged["data"]) == 9
    coop = next(r for r in logged["data"] if r[:2] == ["toyworld", "coop"])
    assert coop[columns.index("base_mean")] == pytest.approx(96.0)
    (image,) = (files_dir / "media" / "images").rglob("*.png")
    assert image.read_bytes()[:8] == PNG_MAGIC
    import wandb

    assert wandb.run is None  # the aggregate run was finished


@pytest.mark.parametrize("methods", ["coop,cocoop", "coop,broken"])
def test_real_hydra_multirun(tmp_path: Path, methods: str) -> None:
    """A real `-m` sweep. With a raising job Hydra skips on_multirun_end; the exit hook still tabulates."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from promptlab.results.records import make_record, write_record

        @hydra.main(version_base="1.3", config_path=None, config_name="cfg")
        def run(cfg):
            if cfg.method == "broken":
                raise RuntimeError("job crashed")
            out = HydraConfig.get().runtime.output_dir
            base, novel = 80.0 + cfg.seed, 60.0 + cfg.seed
            write_record(out, make_record(out, status="complete", config_hash="h",
                         summary={"protocol": "base2novel", "dataset": "toyworld", "method": cfg.method,
                                  "seed": cfg.seed}, metrics={"base_acc": base, "novel_acc": novel}))

        if __name__ == "__main__":
            from hydra.core.config_store import ConfigStore
            ConfigStore.instance().store(name="cfg", node={
                "method": "coop", "seed": 1, "logger": {"name": "none"},
                "hydra": {"sweep": {"dir": "SWEEP/${now:%H-%M-%S}"},
                          "callbacks": {"aggregate": {
                              "_target_": "promptlab.results.callback.AggregateOnMultirunEnd"}}}})
            run()
    """).replace("SWEEP", str(tmp_path / "multirun")))
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    done = subprocess.run([sys.executable, str(app), "-m", f"method={methods}", "seed=1,2"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    failing = "broken" in methods
    assert done.returncode == int(failing), done.stdout + done.stderr
    (sweep,) = (tmp_path / "multirun").iterdir()  # the callback resolved the same ${now:} sweep dir
    markdown = (sweep / "table_base2novel.md").read_text()  # completed jobs are tabulated either way
    assert "| toyworld | coop | 81.50 ± 0.50 | 61.50 ± 0.50 |" in markdown
    assert ("| toyworld | cocoop |" in markdown) != failing
    assert ("stopped early" in done.stdout) == failing


# --------------------------------------------------------------------------- table object and read_sweep


def test_table_object_renders_and_hands_out_plain_records(tmp_path: Path) -> None:
    table = _b2n_table(_b2n_sweep(tmp_path))
    # The methods and the module-level functions are the same renderers.
    assert table.to_markdown() == to_markdown(table)
    assert table.to_csv() == to_csv(table)
    assert table.to_latex() == to_latex(table)

    records = table.to_records()
    assert len(records) == len(table.rows) == 9
    assert all(list(r) == table.record_columns() for r in records)
    json.dumps(records)  # plain data
    markdown_lines = table.to_markdown().splitlines()
    for record, row in zip(records, table.rows, strict=True):
        # Every number of a record is the one the markdown shows for that row.
        cells = []
        for col in table.value_columns:
            mean, std = record[f"{col}_mean"], record[f"{col}_std"]
            cells.append(f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}")
        line = "| " + " | ".join([row.labels["dataset"], row.labels["method"], *cells, row.seeds_text]) + " |"
        assert line in markdown_lines
    coop = next(r for r in records if r["dataset"] == "toyworld" and r["method"] == "coop")
    assert coop["is_average"] is False and coop["n_runs"] == 3
    assert coop["base_mean"] == pytest.approx(96.0) and coop["base_n"] == 3
    assert coop["base_std"] == pytest.approx(statistics.pstdev([96.0, 94.0, 98.0]))
    pets = next(r for r in records if r["method"] == "coop" and r["dataset"] == "oxford_pets")
    assert pets["dataset"] == "oxford_pets"  # raw summary values, not the display labels
    average = next(r for r in records if r["is_average"] and r["method"] == "coop")
    assert average["dataset"] == "Average" and average["n_runs"] == 6
    assert average["hm_mean"] == pytest.approx(harmonic_mean(93.0, 64.0))
    assert average["hm_std"] is None and average["base_n"] == 2  # over the two per-dataset means


def test_to_pandas(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    table = _b2n_table(_b2n_sweep(tmp_path))
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == table.record_columns() and len(frame) == 9
    coop = frame[(frame["dataset"] == "toyworld") & (frame["method"] == "coop")].iloc[0]
    assert coop["base_mean"] == pytest.approx(96.0)


def test_to_pandas_without_pandas_names_the_install(tmp_path: Path, monkeypatch) -> None:
    table = _b2n_table(_b2n_sweep(tmp_path))
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        table.to_pandas()


def _hand_written(run_dir: Path, status: str, summary: dict, metrics: dict, error: dict | None = None) -> None:
    """A metrics.json written by hand (as another tool or an older run would), not through make_record."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({
        "schema": 1, "status": status, "run_dir": str(run_dir), "summary": summary, "metrics": metrics,
        "error": error}))


def test_read_sweep_on_hand_written_records(tmp_path: Path) -> None:
    from promptlab.errors import NoCompleteRecordsError
    from promptlab.results import SweepTables, read_sweep

    sweep_dir = tmp_path / "sweep"
    job = 0
    for dataset, method, seed, acc in [("dtd", "coop", 1, 60.0), ("dtd", "coop", 2, 62.0), ("dtd", "zeroshot", 1, 44.0),
                                       ("eurosat", "coop", 1, 80.0), ("eurosat", "zeroshot", 1, 48.0)]:
        _hand_written(sweep_dir / str(job), "complete",
                      {"protocol": "fewshot", "dataset": dataset, "method": method, "seed": seed}, {"acc": acc})
        job += 1
    for seed, (base, novel) in enumerate([(80.0, 60.0), (84.0, 64.0)], start=1):
        _hand_written(sweep_dir / str(job), "complete",
                      {"protocol": "base2novel", "dataset": "toyworld", "method": "coop", "seed": seed},
                      {"base_acc": base, "novel_acc": novel})
        job += 1
    _hand_written(sweep_dir / str(job), "failed", {"protocol": "fewshot", "method": "kgcoop"}, {},
                  {"type": "RuntimeError", "message": "boom"})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    sweep = read_sweep(sweep_dir)
    assert isinstance(sweep, SweepTables)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert [t.protocol for t in sweep] == ["base2novel", "fewshot"] == sweep.protocols == list(sweep.tables)
    assert len(sweep) == 2 and "fewshot" in sweep and "cross_dataset" not in sweep
    assert sweep["fewshot"] is sweep.tables["fewshot"]
    coop = sweep["fewshot"].find(dataset="dtd", method="coop")
    assert coop.cells["acc"].mean == pytest.approx(61.0) and coop.cells["acc"].n == 2
    assert [r.seed for r in coop.runs] == [1, 2]
    assert sweep["fewshot"].find(average=True, method="zeroshot").cells["acc"].mean == pytest.approx(46.0)
    b2n = sweep["base2novel"].find(method="coop")
    assert b2n.cells["hm"].mean == pytest.approx(statistics.fmean([harmonic_mean(80, 60), harmonic_mean(84, 64)]))
    assert [(s.status, s.path.parent.name) for s in sweep.skipped] == [("failed", str(job))]
    assert "RuntimeError: boom" in str(sweep.skipped[0])
    assert len(sweep.records) == job
    with pytest.raises(KeyError, match=r"no 'cross_dataset' table in this sweep; it has \['base2novel', 'fewshot'\]"):
        sweep["cross_dataset"]

    # Run dirs (and parents) work too, several at once.
    two = read_sweep([sweep_dir / "0", sweep_dir / "1"])
    assert list(two.tables) == ["fewshot"] and not two.skipped
    assert two["fewshot"].find(method="coop").n_seeds == (2,)
    with pytest.raises(NoCompleteRecordsError, match="1 failed or incomplete run"):
        read_sweep(sweep_dir / str(job))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_sweep(tmp_path / "missing")


def test_stale_skipped_runs_file_is_removed(tmp_path: Path) -> None:
    sweep = _b2n_sweep(tmp_path / "sweep")
    first = aggregate([sweep], sweep)
    stale = sweep / "skipped_runs.txt"
    assert first["skipped_runs"] == stale and "CUDA out of memory" in stale.read_text()
    # The failed job is rerun and completes: the next aggregation skips nothing, so the old list must go.
    failed_dir = next(p for p in sweep.iterdir() if p.is_dir() and json.loads(
        (p / "metrics.json").read_text())["status"] == "failed")
    _write(failed_dir, "base2novel", {"base_acc": 70.0, "novel_acc": 65.0}, dataset="toyworld", method="kgcoop",
           seed=1)
    second = aggregate([sweep], sweep)
    assert "skipped_runs" not in second and not stale.exists()
    assert "| toyworld | kgcoop |" in (sweep / "table_base2novel.md").read_text()
    # Nothing to clean up: still no file, no error.
    assert "skipped_runs" not in aggregate([sweep], sweep)


def _multirun_yaml(sweep: Path, params: dict, task: list[str], subdir: str = "${job_dirname:${hydra:overrides.task}}",
                   sweeper: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper") -> None:
    """The keys of Hydra's multirun.yaml that say which jobs a basic sweep runs and where."""
    sweep.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": {
        "sweep": {"dir": str(sweep), "subdir": subdir},
        "sweeper": {"_target_": sweeper, "max_batch_size": None, "params": params},
        "overrides": {"task": task},
    }}), sweep / "multirun.yaml")


def test_the_table_lists_jobs_of_the_sweep_that_left_no_record(tmp_path: Path) -> None:
    from promptlab.config.registry import job_dirname
    from promptlab.results.aggregate import read_sweep

    sweep = tmp_path / "sweep"
    # Sweep parameters from the config (an experiment preset) and from the command line (which wins on a key).
    _multirun_yaml(sweep, {"method": "zeroshot,coop", "seed": "1,2,3"}, ["seed=1,2", "dataset=toyworld"])
    jobs = [[f"method={m}", f"seed={s}", "dataset=toyworld"] for m in ("zeroshot", "coop") for s in (1, 2)]
    for job in jobs[:3]:
        _write(sweep / job_dirname(job), "base2novel", {"base_acc": 90.0, "novel_acc": 80.0, "hm": 84.7},
               dataset="toyworld", method=job[0].split("=")[1], seed=int(job[1].split("=")[1]))
    result = read_sweep(sweep)
    assert len(result.records) == 3
    assert [(s.status, s.path.parent.name) for s in result.skipped] == [("missing", job_dirname(jobs[3]))]
    assert "never started" in str(result.skipped[0]) and "method=coop seed=2" in str(result.skipped[0])

    # The CLI prints it with the other left-out runs.
    out = subprocess.run([str(VENV_BIN / "promptlab-table"), str(sweep)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0 and "missing" in out.stdout and job_dirname(jobs[3]) in out.stdout


def test_no_missing_list_when_the_jobs_cannot_be_known(tmp_path: Path) -> None:
    from promptlab.results.planned import planned_jobs

    optuna = tmp_path / "optuna"
    _multirun_yaml(optuna, {"method.optim.lr": "interval(0.001, 0.1)"}, [],
                   sweeper="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    # Every swept key on the command line: Hydra writes `params: null`.
    cli_only = tmp_path / "cli_only"
    _multirun_yaml(cli_only, None, ["seed=1,2", "method=coop"])
    assert [job.run_dir.name for job in planned_jobs(cli_only)] == ["method=coop,seed=1", "method=coop,seed=2"]
    custom = tmp_path / "custom"
    _multirun_yaml(custom, {"seed": "1,2"}, [], subdir="${hydra.job.num}")
    assert planned_jobs(optuna) is None and planned_jobs(custom) is None
    assert planned_jobs(tmp_path / "nothing") is None


def test_tuned_on_filters_the_runs_and_says_what_the_runs_were_tuned_on(tmp_path: Path, capsys) -> None:
    from promptlab.results.aggregate import read_sweep

    metrics = {"base_acc": 90.0, "novel_acc": 80.0, "hm": harmonic_mean(90.0, 80.0)}
    _write(tmp_path / "free", "base2novel", metrics, dataset="toyworld", method="clap", seed=1, tuned_on="none")
    _write(tmp_path / "val", "base2novel", metrics, dataset="toyworld", method="gda", seed=1, tuned_on="few-shot val")
    _write(tmp_path / "test", "base2novel", metrics, dataset="toyworld", method="tip_adapter_f", seed=1,
           tuned_on="test")
    (table,) = read_sweep([tmp_path], tuned_on=["none", "few-shot val"]).tables.values()
    assert sorted(row.keys["method"] for row in table.rows if not row.is_average) == ["clap", "gda"]
    assert main([str(tmp_path), "--tuned-on", "full val", "--out", str(tmp_path / "o"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "no complete run was tuned on full val" in err and "few-shot val, none, test" in err
    assert main([str(tmp_path), "--tuned-on", "test", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    assert "tip_adapter_f" in (tmp_path / "t" / "table_base2novel.md").read_text().lower().replace("-", "_")
