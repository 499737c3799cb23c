"""The benchmark's feature and augmented rows run, report every figure, and print the targets with what limits them."""

from __future__ import annotations

import math

import torch

from promptlab.bench import TARGETS, augmented_rows, feature_rows, parse_args, target_lines
from tests.conftest import make_random_clip


def test_feature_and_augmented_rows_report_every_figure_and_each_target_with_its_limit():
    args = parse_args(["--classes", "3", "--batch", "2", "--images", "8", "--eval-batch", "4", "--repeats", "1",
                       "--aug-images", "4", "--cocoop-reference-images", "2", "--device", "cpu"])
    clip, cpu = make_random_clip(), torch.device("cpu")
    off = torch.autocast("cpu", enabled=False)
    result = feature_rows(args, clip, cpu, off) | augmented_rows(args, clip, cpu, off)
    ratios = [k for k in result if k.startswith("ratio_") or k.endswith("_img_s")]
    assert len(ratios) >= 20 and all(math.isfinite(result[k]) and result[k] > 0 for k in ratios)
    # The limits are measured figures: the encoder plus the text side costs more than the encoder alone.
    assert result["ratio_aug_floor_plus_text_vs_floor_time"] > 1.0
    assert "4 JPEGs 500x375" in result["aug_conditions"] and "batch 2" in result["aug_conditions"]
    lines = target_lines(result)
    assert len(lines) == len(TARGETS)
    assert all(line.strip().startswith(("PASS", "FAIL")) for line in lines)
    coop = next(line for line in lines if "within 1.3x" in line)
    assert "encoder + CoOp's text side alone:" in coop
    cocoop = next(line for line in lines if "15x" in line)
    assert "the bare encoder alone is" in cocoop
