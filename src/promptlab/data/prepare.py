"""`promptlab-data prepare`: download a dataset, verify it, and lay it out as the CoOp readers expect.

Steps, each safe to interrupt and rerun:
1. download every file of the dataset's `Source` (promptlab.data.sources) into `<root>/.downloads/<dataset>/`,
   resuming a partial file with an HTTP Range request (also when the connection drops mid-file), with a
   progress bar;
2. verify each file against its published checksum: a mismatch deletes the file and stops before
   anything is extracted;
3. unpack the archives into a staging folder next to the dataset folder and move their folders into the
   CoOp layout there; put the single files (split files) in place;
4. read the staged dataset as training will (class count of the config, every listed image inside the
   folder and present) and only then rename it to its final name: a failed prepare leaves no
   half-extracted dataset folder behind.
Datasets that must be obtained by hand (ImageNet, StanfordCars, ImageNet-Sketch) get their exact steps;
once the images are in place, `prepare` finishes the rest (split file, ImageNet's classnames.txt).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError
from promptlab.data.readers import read_dataset
from promptlab.data.sources import COOP_DATASETS, SOURCES, Download, Source
from promptlab.io import atomic_write_json, atomic_write_text, make_shared_tempdir

log = logging.getLogger(__name__)

DOWNLOADS_DIRNAME = ".downloads"
RECORD_NAME = "prepared.json"  # what was downloaded, with the checksums computed on arrival
CHUNK = 1 << 20
RETRIES = 5
TIMEOUT_S = 60
TAR_FORMATS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


# --------------------------------------------------------------------------- downloads
def download(url: str, dest: Path, desc: str | None = None, retries: int = RETRIES) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part` with HTTP Range requests; returns `dest`.

    A dropped connection or a short body is resumed from the bytes already on disk (up to `retries` times
    in a row without progress); a server that ignores Range restarts the file. HTTP errors name the URL.
    """
    import requests
    from tqdm.auto import tqdm

    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        total: int | None = None
        try:
            with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
                if response.status_code == 416 and have:  # nothing left to send: the part file is complete
                    break
                if response.status_code >= 400:
                    raise DatasetError(
                        f"download of {url} failed: HTTP {response.status_code} {response.reason}. The source may "
                        f"have moved; download the file by hand to {dest} and run prepare again (it is then used "
                        f"as is, after its checksum is verified)."
                    )
                if have and response.status_code != 206:
                    have = 0  # the server ignores Range: start again
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                # Keep what arrives before a connection drops (urllib3 would discard the last partial read);
                # the size is compared with Content-Length below, and the rest requested with Range.
                response.raw.enforce_content_length = False
                with open(part, "ab" if have else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=desc or dest.name, leave=False, disable=None,
                ) as bar:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            failures = _retry_or_fail(url, part, have, failures, retries, err)
            continue
        size = part.stat().st_size
        if total is None or size >= total:
            break
        failures = _retry_or_fail(url, part, have, failures, retries, f"{size} of {total} bytes received")
    os.replace(part, dest)
    return dest


def _retry_or_fail(url: str, part: Path, had: int, failures: int, retries: int, why: object) -> int:
    now = part.stat().st_size if part.is_file() else 0
    failures = 0 if now > had else failures + 1  # progress resets the count: slow links still finish
    if failures > retries:
        raise DatasetError(
            f"download of {url} keeps failing ({why}); {now} bytes are kept in {part}. Run the same command "
            f"again to resume from there."
        )
    log.warning("download of %s interrupted at %d bytes (%s); resuming", url, now, why)
    time.sleep(min(2.0 ** failures, 30.0) if failures else 0.0)
    return failures


def file_digests(path: Path) -> dict[str, str]:
    """MD5 and SHA-256 of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def verify(path: Path, item: Download) -> dict[str, str]:
    """The file's digests; DatasetError (and the file deleted) when a published checksum differs."""
    digests = file_digests(path)
    for algorithm in ("sha256", "md5"):
        expected = getattr(item, algorithm)
        if expected and digests[algorithm] != expected.lower():
            path.unlink()
            raise DatasetError(
                f"{path.name}: checksum mismatch ({algorithm} expected {expected}, got {digests[algorithm]}). The "
                f"file was deleted and nothing was extracted. Run the command again to download it again; if the "
                f"mismatch repeats, the file at {item.url} is not the published one."
            )
    if not (item.md5 or item.sha256):
        log.info("%s: no published checksum; sha256 %s (kept in %s)", path.name, digests["sha256"], RECORD_NAME)
    return digests


# --------------------------------------------------------------------------- layout
def _unpack(archive: Path, into: Path) -> None:
    name = archive.name.lower()
    if name.endswith(TAR_FORMATS):
        # filter="data": no absolute paths, no "..", no links out of the folder, no device files.
        shutil.unpack_archive(archive, into, filter="data")
    else:
        shutil.unpack_archive(archive, into)  # zip: members with ".." or absolute names are skipped


def _place(item: Download, path: Path, staging: Path, dataset_dir: Path) -> None:
    if not item.is_archive:
        target = dataset_dir / str(item.dest or item.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return
    unpacked = staging / f"unpacked-{item.filename}"
    _unpack(path, unpacked)
    for inner in item.inner:
        _unpack(unpacked / inner, unpacked)
    for source, dest in item.moves:
        origin = unpacked / source
        if not origin.exists():
            raise DatasetError(
                f"{item.filename} does not hold {source}/ (found: {sorted(p.name for p in unpacked.iterdir())}). "
                f"The archive at {item.url} changed its layout; report it, or lay the files out by hand "
                f"({COOP_DATASETS})."
            )
        target = dataset_dir / dest if dest else dataset_dir
        if dest:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(origin), str(target))
        else:  # the folder's content goes to the dataset folder itself
            dataset_dir.mkdir(parents=True, exist_ok=True)
            for entry in origin.iterdir():
                shutil.move(str(entry), str(dataset_dir / entry.name))
    shutil.rmtree(unpacked)


def _remove_downloads(downloads: Path, root: Path) -> None:
    shutil.rmtree(downloads, ignore_errors=True)
    shared = root / DOWNLOADS_DIRNAME
    if downloads.parent == shared:
        try:
            shared.rmdir()  # only when no other dataset's download is waiting there
        except OSError:
            pass


def _with_dir(cfg: Mapping[str, Any], dataset_dir: Path) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {**plain, "dataset_dir": str(dataset_dir)}  # type: ignore[dict-item]


# --------------------------------------------------------------------------- the command
def prepare_dataset(
    dataset_cfg: Mapping[str, Any],
    root: Path,
    downloads: Path | None = None,
    keep_archives: bool = False,
    force: bool = False,
    source: Source | None = None,
) -> Path:
    """Download, verify and lay out the dataset of `dataset_cfg` under `root`; returns its folder.

    `source`: the registry entry (default: `SOURCES[dataset_cfg["name"]]`; tests pass one with local URLs).
    """
    name = str(dataset_cfg["name"])
    source = source or SOURCES.get(name)
    if source is None:
        raise DatasetError(f"no download source is known for dataset {name!r}; see {COOP_DATASETS} (known: "
                           f"{sorted(SOURCES)}).")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dataset_dir = root / str(dataset_cfg["dataset_dir"])
    downloads = Path(downloads) if downloads is not None else root / DOWNLOADS_DIRNAME / name
    for note in source.notes:
        log.info("%s: %s", name, note)

    if source.manual is not None:
        return _finish_manual(dataset_cfg, source, root, dataset_dir, downloads, keep_archives)
    if dataset_dir.exists() and not force:
        try:
            read_dataset(dataset_cfg, root)
        except DatasetError as err:
            raise DatasetError(f"{dataset_dir} exists but is not complete: {err}\nRun prepare with --force to "
                               f"replace it.") from err
        log.info("%s is already prepared in %s (checked); --force prepares it again", name, dataset_dir)
        return dataset_dir

    fetched = [(item, download(item.url, downloads / item.filename)) for item in source.downloads]
    record = {item.filename: {"url": item.url, **verify(path, item)} for item, path in fetched}
    staging = make_shared_tempdir(root, f".{dataset_dir.name}.partial-")
    try:
        staged = staging / dataset_dir.name
        staged.mkdir()
        for item, path in fetched:
            _place(item, path, staging, staged)
        atomic_write_json(staged / RECORD_NAME, record)
        read_dataset(_with_dir(dataset_cfg, staged), root)  # the same reading and checks as training
        if dataset_dir.exists():  # --force
            shutil.rmtree(dataset_dir)
        os.replace(staged, dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        _remove_downloads(downloads, root)
    log.info("%s prepared in %s", name, dataset_dir)
    return dataset_dir


def _finish_manual(
    dataset_cfg: Mapping[str, Any], source: Source, root: Path, dataset_dir: Path, downloads: Path,
    keep_archives: bool,
) -> Path:
    """Datasets whose images a person must fetch: say how, or, once they are there, add what can be
    downloaded (split file) or written (ImageNet class names) and check the result."""
    name = str(dataset_cfg["name"])
    image_dir = dataset_dir / str(dataset_cfg.get("image_dir") or "")
    if not dataset_dir.is_dir() or not any(image_dir.iterdir() if image_dir.is_dir() else ()):
        raise DatasetError(f"{name} must be obtained by hand.\n{source.manual}")
    for item in source.downloads:
        path = download(item.url, downloads / item.filename)
        verify(path, item)
        _place(item, path, downloads, dataset_dir)
    if str(dataset_cfg.get("reader")) == "imagenet":
        write_imagenet_classnames(root, dataset_dir, dataset_cfg)
    read_dataset(dataset_cfg, root)
    if not keep_archives:
        _remove_downloads(downloads, root)
    log.info("%s checked in %s", name, dataset_dir)
    return dataset_dir


def write_imagenet_classnames(root: Path, dataset_dir: Path, dataset_cfg: Mapping[str, Any]) -> Path:
    """Write `classnames.txt` ("<wnid> <name>" lines, CoOp's format) from the 1,000 train folders and open_clip's
    list, into imagenet/ and the ImageNet variant folders present under `root` that lack one."""
    from promptlab.data.readers.common import list_subfolders
    from promptlab.data.readers.imagenet import IMAGENET_NUM_CLASSES, open_clip_names

    names_file = str(dataset_cfg.get("classnames_file") or "classnames.txt")
    target = dataset_dir / names_file
    if not target.is_file():
        train = dataset_dir / str(dataset_cfg.get("image_dir")) / str(dataset_cfg.get("train_dir"))
        wnids = list_subfolders(train) if train.is_dir() else []
        if len(wnids) != IMAGENET_NUM_CLASSES:
            raise DatasetError(f"ImageNet: {train} holds {len(wnids)} class folders, expected "
                               f"{IMAGENET_NUM_CLASSES}; complete step 2 of the manual steps "
                               f"(`promptlab-data prepare imagenet` prints them when the folder is absent).")
        names = open_clip_names(wnids)
        atomic_write_text(target, "".join(f"{wnid} {names[wnid]}\n" for wnid in wnids))
        log.info("wrote %s from open_clip's ImageNet class names", target)
    for variant in ("imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"):
        folder = root / variant
        if folder.is_dir() and not (folder / names_file).is_file():
            shutil.copyfile(target, folder / names_file)
            log.info("copied %s to %s", target, folder)
    return target
