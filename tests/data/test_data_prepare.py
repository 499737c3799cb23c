"""`promptlab-data prepare` against a local HTTP server (127.0.0.1) serving small archives in the real
formats and layouts: downloads resumed after a cut connection, checksums, extraction into the CoOp layout,
and no half-extracted tree after a failure."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from promptlab.data.cli import main
from promptlab.data.errors import DatasetError
from promptlab.data.prepare import RECORD_NAME, download, prepare_dataset
from promptlab.data.readers import read_dataset
from promptlab.data.sources import SOURCES, Source
from tests.dataset_fixtures import build_fixture, dataset_config

COUNTS = {"train": 2, "val": 1, "test": 1}


class Server:
    """Files served from memory; supports `Range: bytes=N-`; paths in `cut_once` break off half-way the
    first time they are sent whole (what an interrupted download looks like)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(range_header.split("=")[1].rstrip("-")) if range_header else 0
                if start >= len(body):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if range_header else 200)
                if range_header:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.cut_once and not range_header:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"{self.url}/{name}"


@pytest.fixture()
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def tar_gz(members: dict[str, Path], mode: str = "w:gz") -> bytes:
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for arcname, path in members.items():
            tar.add(path, arcname=arcname)
    return buffer.getvalue()


def zip_bytes(members: dict[str, Path]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for arcname, folder in members.items():
            for path in sorted(folder.rglob("*")):
                archive.write(path, f"{arcname}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def served(source: Source, server: Server, payloads: dict[str, bytes], checksums: bool = True) -> Source:
    """The real registry entry with its URLs pointed at the local server (same file names, same layout
    moves) and the MD5s of the served files."""
    downloads = []
    for item in source.downloads:
        data = payloads[item.filename]
        downloads.append(replace(item, url=server.add(item.filename, data),
                                 md5=md5(data) if checksums and item.md5 else None))
    return replace(source, downloads=tuple(downloads))


def upstream(name: str, tmp_path: Path):
    """A fixture tree of dataset `name` standing in for what the original archives hold."""
    expected = build_fixture(name, tmp_path / "upstream", counts=COUNTS)
    return expected, expected.dataset_dir


# --------------------------------------------------------------------------- three datasets, three formats
def test_prepare_dtd_from_a_tar_gz_resumes_a_cut_download(tmp_path: Path, server: Server) -> None:
    expected, up = upstream("dtd", tmp_path)
    archive = tar_gz({"dtd/images": up / "images", "dtd/labels": up / "images"})  # labels/: unused, as upstream
    source = served(SOURCES["dtd"], server, {"dtd-r1.0.1.tar.gz": archive,
                                             "split_zhou_DescribableTextures.json":
                                                 (up / "split_zhou_DescribableTextures.json").read_bytes()})
    server.cut_once.add("/dtd-r1.0.1.tar.gz")
    cfg = dataset_config("dtd", num_classes=5)
    root = tmp_path / "data"

    folder = prepare_dataset(cfg, root, source=source)
    assert folder == root / "dtd"
    assert sorted(p.name for p in folder.iterdir()) == ["images", RECORD_NAME, "split_zhou_DescribableTextures.json"]
    splits = read_dataset(cfg, root)
    assert splits.classnames == expected.classnames and len(splits.test) == 5
    # The archive broke off half-way and was resumed with a Range request, not downloaded again.
    archive_requests = [r for p, r in server.requests if p == "/dtd-r1.0.1.tar.gz"]
    assert archive_requests == [None, f"bytes={len(archive) // 2}-"]
    record = json.loads((folder / RECORD_NAME).read_text())
    assert record["dtd-r1.0.1.tar.gz"]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert not (root / ".downloads").exists()  # archives removed once the dataset is in place
    assert [p.name for p in root.iterdir()] == ["dtd"]  # no staging folder left

    # Run again: nothing is downloaded, the prepared dataset is checked and kept.
    n = len(server.requests)
    assert prepare_dataset(cfg, root, source=source) == folder and len(server.requests) == n


def test_prepare_eurosat_from_a_zip(tmp_path: Path, server: Server) -> None:
    expected, up = upstream("eurosat", tmp_path)
    source = served(SOURCES["eurosat"], server, {"EuroSAT.zip": zip_bytes({"2750": up / "2750"}),
                                                 "split_zhou_EuroSAT.json":
                                                     (up / "split_zhou_EuroSAT.json").read_bytes()})
    cfg = dataset_config("eurosat", num_classes=4)
    prepare_dataset(cfg, tmp_path / "data", source=source, keep_archives=True)
    splits = read_dataset(cfg, tmp_path / "data")
    assert splits.classnames == expected.classnames
    assert (tmp_path / "data" / ".downloads" / "eurosat" / "EuroSAT.zip").is_file()  # --keep-archives


def test_prepare_oxford_pets_from_two_archives_and_fgvc_from_a_folder_move(tmp_path: Path, server: Server) -> None:
    expected, up = upstream("oxford_pets", tmp_path)
    (up / "annotations").mkdir()
    (up / "annotations" / "list.txt").write_text("# as upstream\n")
    source = served(SOURCES["oxford_pets"], server, {
        "images.tar.gz": tar_gz({"images": up / "images"}),
        "annotations.tar.gz": tar_gz({"annotations": up / "annotations"}),
        "split_zhou_OxfordPets.json": (up / "split_zhou_OxfordPets.json").read_bytes(),
    })
    cfg = dataset_config("oxford_pets", num_classes=5)
    folder = prepare_dataset(cfg, tmp_path / "data", source=source)
    assert (folder / "annotations" / "list.txt").is_file()
    assert read_dataset(cfg, tmp_path / "data").classnames == expected.classnames

    # FGVCAircraft: the data/ folder of the archive becomes the dataset folder itself; no checksum is
    # published, so the computed one is recorded.
    fgvc, fgvc_up = upstream("fgvc_aircraft", tmp_path)
    data = tar_gz({"fgvc-aircraft-2013b/data": fgvc_up})
    source = served(SOURCES["fgvc_aircraft"], server, {"fgvc-aircraft-2013b.tar.gz": data})
    cfg = dataset_config("fgvc_aircraft", num_classes=5)
    folder = prepare_dataset(cfg, tmp_path / "data", source=source)
    assert read_dataset(cfg, tmp_path / "data").classnames == fgvc.classnames
    assert json.loads((folder / RECORD_NAME).read_text())["fgvc-aircraft-2013b.tar.gz"]["sha256"] == \
        hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- failures
def test_checksum_mismatch_stops_before_extraction(tmp_path: Path, server: Server) -> None:
    _, up = upstream("dtd", tmp_path)
    good = tar_gz({"dtd/images": up / "images"})
    source = served(SOURCES["dtd"], server, {"dtd-r1.0.1.tar.gz": good, "split_zhou_DescribableTextures.json":
                                             (up / "split_zhou_DescribableTextures.json").read_bytes()})
    server.files["/dtd-r1.0.1.tar.gz"] = good[:-10] + b"0123456789"  # the server now sends other bytes
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=rf"dtd-r1.0.1.tar.gz: checksum mismatch \(md5 expected {md5(good)}, got "
                                           rf"[0-9a-f]{{32}}\)\. The file was deleted and nothing was extracted"):
        prepare_dataset(dataset_config("dtd", num_classes=5), root, source=source)
    assert not (root / "dtd").exists()
    assert not (root / ".downloads" / "dtd" / "dtd-r1.0.1.tar.gz").exists()
    assert [p.name for p in root.iterdir()] == [".downloads"]  # no staging folder, no dataset folder


def test_wrong_split_file_leaves_no_half_prepared_dataset(tmp_path: Path, server: Server) -> None:
    _, up = upstream("dtd", tmp_path)
    _, pets = upstream("oxford_pets", tmp_path)
    source = served(SOURCES["dtd"], server, {"dtd-r1.0.1.tar.gz": tar_gz({"dtd/images": up / "images"}),
                                             "split_zhou_DescribableTextures.json":
                                                 (pets / "split_zhou_OxfordPets.json").read_bytes()})
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=r"has 5 classes, DTD has 47"):
        prepare_dataset(dataset_config("dtd"), root, source=source)
    assert sorted(p.name for p in root.iterdir()) == [".downloads"]


def test_download_errors_name_the_url_and_keep_what_arrived(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DatasetError, match=rf"download of {server.url}/absent.tar.gz failed: HTTP 404"):
        download(f"{server.url}/absent.tar.gz", tmp_path / "absent.tar.gz")
    # A .part file left by an earlier, interrupted run: only the rest is requested.
    url = server.add("big.bin", bytes(range(256)) * 64)
    part = tmp_path / "big.bin.part"
    part.write_bytes(server.files["/big.bin"][:1000])
    assert download(url, tmp_path / "big.bin").read_bytes() == server.files["/big.bin"]
    assert server.requests[-1] == ("/big.bin", "bytes=1000-")


# --------------------------------------------------------------------------- by hand
def test_imagenet_prints_its_manual_steps_then_finishes_what_it_can(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    with pytest.raises(SystemExit) as info:
        main(["prepare", "imagenet", "--root", str(root)])
    err = capsys.readouterr().err
    assert info.value.code == 1
    assert "imagenet must be obtained by hand" in err and "ILSVRC2012_img_train.tar" in err and "image-net.org" in err

    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = [f"n{i:08d}" for i in range(1000)]
    for split, folders in (("train", wnids), ("val", wnids[:2])):
        for wnid in folders:
            (root / "imagenet" / "images" / split / wnid).mkdir(parents=True)
            Image.new("RGB", (2, 2)).save(root / "imagenet" / "images" / split / wnid / "a.JPEG", format="JPEG")
    (root / "imagenet-adversarial" / "imagenet-a" / wnids[7]).mkdir(parents=True)
    Image.new("RGB", (2, 2)).save(root / "imagenet-adversarial" / "imagenet-a" / wnids[7] / "x.jpg")
    assert main(["prepare", "imagenet", "--root", str(root)]) == 0
    lines = (root / "imagenet" / "classnames.txt").read_text().splitlines()
    assert lines[0] == f"{wnids[0]} {IMAGENET_CLASSNAMES[0]}" and len(lines) == 1000
    assert (root / "imagenet-adversarial" / "classnames.txt").read_text() == "\n".join(lines) + "\n"
    shutil.rmtree(root / "imagenet" / "images" / "val")
    with pytest.raises(SystemExit):
        main(["prepare", "imagenet", "--root", str(root)])  # the check of the result names what is missing
    assert "val folder not found" in capsys.readouterr().err


def test_prepare_caltech101_from_a_tar_gz_inside_a_zip(tmp_path: Path, server: Server) -> None:
    # data.caltech.edu's caltech-101.zip holds caltech-101/101_ObjectCategories.tar.gz (and an annotations
    # archive that the split file does not need).
    expected, up = upstream("caltech101", tmp_path)
    inner = tmp_path / "inner"
    (inner / "caltech-101").mkdir(parents=True)
    (inner / "caltech-101" / "101_ObjectCategories.tar.gz").write_bytes(
        tar_gz({"101_ObjectCategories": up / "101_ObjectCategories"}))
    (inner / "caltech-101" / "Annotations.tar").write_bytes(tar_gz({}, mode="w"))
    source = served(SOURCES["caltech101"], server, {
        "caltech-101.zip": zip_bytes({"caltech-101": inner / "caltech-101"}),
        "split_zhou_Caltech101.json": (up / "split_zhou_Caltech101.json").read_bytes(),
    })
    cfg = dataset_config("caltech101", num_classes=5)
    folder = prepare_dataset(cfg, tmp_path / "data", source=source)
    assert sorted(p.name for p in folder.iterdir()) == ["101_ObjectCategories", RECORD_NAME,
                                                        "split_zhou_Caltech101.json"]
    assert read_dataset(cfg, tmp_path / "data").classnames == expected.classnames
