"""The one list of launch-only keys: they say where a job writes, how it is watched or how fast it runs,
never what it computes. The resume hash ignores them (a moved output folder or another worker count
resumes every finished job) and the sweep's job folder names leave them out (a rerun with another
worker count lands in the same folders).
"""

from __future__ import annotations

LAUNCH_KEYS: tuple[str, ...] = (
    "hydra",  # Hydra's runtime node, if present
    "paths.output_dir",
    "paths.cache_dir",
    "paths.data_root",  # the same data under another root gives the same results
    "loader.num_workers",
    "loader.pin_memory",
    "method.loader.decoded_cache_disk",  # where decoded training images are kept, not what they are
    "trainer.enable_progress_bar",
    "num_threads",
    "analysis",
    "logger",
    "test_feature_cache",
    "eval_cache",  # test_feature_cache's deprecated name (config/deprecated.py): the old override's folders stay
    "assign_gpus",
    "sweep_name",
    "resume",
    "checkpoint",  # how often a job saves its progress, not what it computes (a resumed job ends identical)
    "launcher",
    "hydra.launcher.n_jobs",
)


def is_launch_key(key: str) -> bool:
    """True for a launch-only key or anything below one (`logger.wandb.tags` is under `logger`)."""
    return any(key == k or key.startswith(k + ".") for k in LAUNCH_KEYS)
