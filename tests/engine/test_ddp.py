"""DDP on 2 CPU processes (gloo): every test image counted exactly once, training does not hang.
The DDP runs start a fresh interpreter (Lightning's launcher re-runs the command line for rank 1); the
single-process runs beside them run in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from promptlab.engine.datamodule import ShardSampler
from tests.runs import TINY_WORLD, random_checkpoint, run_cli, run_cli_subprocess, workspace_overrides


@pytest.mark.parametrize("length,world", [(7, 2), (90, 2), (5, 3), (1, 2)])
def test_shards_cover_every_index_exactly_once(length, world):
    seen = sorted(i for rank in range(world) for i in ShardSampler(length, rank, world))
    assert seen == list(range(length))
    # What the default DistributedSampler would do: pad with repeats (the reason for ShardSampler).
    padded = sum(len(torch.utils.data.DistributedSampler(range(length), world, r, shuffle=False))
                 for r in range(world))
    assert padded >= length


def _corrupt_one_test_image(data_root: Path) -> str:
    world = next((data_root / "toyworld").glob("grid6-*"))
    split = json.loads((world / "split_zhou_ToyWorld.json").read_text())
    relpath = split["test"][0][0]
    (world / "images" / relpath).write_bytes(b"not a png")
    return relpath


def _evals(run_dir: Path) -> list[dict]:
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "complete", record.get("error")
    return record["evaluations"]


@pytest.mark.slow
def test_ddp_evaluation_equals_single_process_and_training_finishes(tmp_path):
    ckpt = random_checkpoint(tmp_path / "random_clip.pt")
    common = [*workspace_overrides(tmp_path), f"model.weights_file={ckpt}", *TINY_WORLD, "shots=2",
              "loader.on_error=skip"]
    # Generate the world, then break one base test image: 107 base images, an odd count for 2 ranks.
    warm = run_cli([*common, f"hydra.run.dir={tmp_path / 'warm'}", "test_feature_cache=false"], cwd=tmp_path)
    assert warm.returncode == 0, warm.stderr[-3000:]
    _corrupt_one_test_image(tmp_path / "data")

    single = tmp_path / "single"
    proc = run_cli([*common, f"hydra.run.dir={single}", "test_feature_cache=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = tmp_path / "ddp"
    proc = run_cli_subprocess([*common, f"hydra.run.dir={ddp}", "test_feature_cache=false", "trainer=ddp",
                               "trainer.accelerator=cpu"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single_evals, ddp_evals = _evals(single), _evals(ddp)
    assert single_evals[0]["n_images"] == 18 * 6 - 1
    assert ddp_evals == single_evals

    # CoOp trained with DDP: finishes, and its saved prompt scores the same in a single process.
    coop = tmp_path / "coop_ddp"
    proc = run_cli_subprocess([*common, f"hydra.run.dir={coop}", "method=coop", "method.optim.epochs=2", "trainer=ddp",
                               "trainer.accelerator=cpu"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reeval = tmp_path / "coop_single"
    proc = run_cli([*common, f"hydra.run.dir={reeval}", "method=coop", "method.optim.epochs=0",
                    f"load_prompt={coop / 'prompt_learner.pt'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _evals(reeval) == _evals(coop)
