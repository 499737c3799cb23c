"""`promptlab-data`: get a dataset into the CoOp layout, and check one that is there.

    promptlab-data prepare dtd --root /data          # download, verify, extract, fetch the split file
    promptlab-data check dtd --root /data            # every listed image inside the folder, present, decodable
    promptlab-data check imagefolder --root /data dataset.dataset_dir=my_photos   # any config override

`<dataset>` is a dataset config name (`dataset=` of promptlab-train); trailing `key=value` arguments are
Hydra overrides of the same config, so the check sees exactly what a training run would read. `--root`
defaults to paths.data_root (the PROMPTLAB_DATA environment variable, else ./data).
Exit status: 0 ok, 1 problems found (or a user error, printed as one paragraph), 2 usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from promptlab.cli_errors import exit_on_user_error

PROG = "promptlab-data"
EXIT_OK, EXIT_PROBLEMS = 0, 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Prepare and check datasets in the CoOp layout.")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check a dataset on disk against its config")
    check.add_argument("dataset", help="dataset config name, e.g. dtd, oxford_pets, imagenet")
    check.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset.dataset_dir=my_photos")
    check.add_argument("--root", type=Path, default=None, help="data root (default: paths.data_root)")
    check.add_argument("--no-decode", action="store_true",
                       help="cheap form: containment, existence and classes only (what every run checks)")
    check.add_argument("--cache-dir", type=Path, default=None,
                       help="where decode verdicts are kept (default: paths.cache_dir, shared with training)")

    prepare = commands.add_parser("prepare", help="download a dataset and lay it out as promptlab reads it")
    prepare.add_argument("dataset", help="dataset config name, e.g. dtd, eurosat, oxford_pets")
    prepare.add_argument("--root", type=Path, default=None, help="data root (default: paths.data_root)")
    prepare.add_argument("--downloads", type=Path, default=None,
                         help="where archives are downloaded and kept (default: <root>/.downloads)")
    prepare.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives")
    prepare.add_argument("--force", action="store_true", help="prepare again although the dataset folder exists")
    return parser


def _dataset_config(dataset: str, root: Path | None, overrides: Sequence[str]):
    from promptlab.config import compose
    from promptlab.errors import ConfigError

    args = [f"dataset={dataset}", *([f"paths.data_root={root}"] if root is not None else []), *overrides]
    try:
        return compose(args, check=False)
    except Exception as err:  # noqa: BLE001 - Hydra's errors for an unknown config name or key
        raise ConfigError(f"cannot compose the config for {dataset!r} with {list(overrides)}: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after the options (argparse alone takes them only before).
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "check"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "check":
        args.overrides = [*args.overrides, *extra]
    with exit_on_user_error(PROG):
        if args.command == "check":
            return _check(args)
        return _prepare(args)


def _check(args: argparse.Namespace) -> int:
    from promptlab.data.check import check_dataset, print_check

    cfg = _dataset_config(args.dataset, args.root, args.overrides)
    report = check_dataset(
        cfg.dataset, Path(cfg.paths.data_root).expanduser(), decode=not args.no_decode,
        cache_dir=args.cache_dir or Path(cfg.paths.cache_dir),
        fewshot_dir=Path(cfg.paths.fewshot_dir) if cfg.paths.get("fewshot_dir") else None,
    )
    print_check(report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _prepare(args: argparse.Namespace) -> int:
    import logging

    from promptlab.data.prepare import prepare_dataset

    # prepare reports its steps (resumed downloads, computed checksums, where the dataset went) through logging.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _dataset_config(args.dataset, args.root, [])
    folder = prepare_dataset(cfg.dataset, Path(cfg.paths.data_root).expanduser(), downloads=args.downloads,
                             keep_archives=args.keep_archives, force=args.force)
    print(f"{args.dataset} is ready in {folder}; train with: promptlab-train dataset={args.dataset} "
          f"paths.data_root={Path(cfg.paths.data_root).expanduser()}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
