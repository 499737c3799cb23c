"""The benchmark's deep rows (MaPLe, PromptSRC against the reference's per-step path) run and report every figure."""

from __future__ import annotations

import math

import torch

from promptlab.bench import deep_rows, parse_args
from tests.conftest import make_random_clip


def test_deep_rows_report_every_figure_and_how_they_were_measured():
    args = parse_args(["--rows", "deep", "--classes", "3", "--deep-batch", "2", "--deep-images", "4",
                       "--deep-eval-batch", "2", "--repeats", "1", "--device", "cpu"])
    clip = make_random_clip()
    result = deep_rows(args, clip, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    for kind in ("maple", "promptsrc"):
        for key in (f"deep_train_{kind}_img_s", f"deep_train_{kind}_reference_img_s", f"deep_eval_{kind}_img_s",
                    f"deep_eval_{kind}_reference_img_s", f"ratio_deep_train_{kind}_vs_reference_speed"):
            assert math.isfinite(result[key]) and result[key] > 0, key
    conditions = result["deep_conditions"]
    # The tiny CLIP has 2 blocks per tower: the reference's depth 9 is capped at 2, and the text says so.
    assert "MaPLe depth 2" in conditions and "depth 2/2" in conditions and "batch 2" in conditions
    assert "77 text tokens, no prefix reuse" in conditions
