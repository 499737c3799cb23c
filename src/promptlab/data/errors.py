"""The one exception type for data problems a user can cause (and fix), and the messages that explain them.

Everything that goes wrong because of what is (or is not) on disk raises `DatasetError` (a
`promptlab.errors.PromptlabError`, defined there with the other user errors), with a message that names
the path or value, says what was expected and what to do. Bugs in promptlab itself are asserts, not
`DatasetError`.
"""

from __future__ import annotations

from pathlib import Path

from promptlab.errors import DatasetError  # re-exported: promptlab.data.errors.DatasetError

#: Environment variable that the `paths.data_root` config default reads (see conf/ paths).
DATA_ROOT_ENV = "PROMPTLAB_DATA"

#: The CoOp instructions for downloading the datasets into the layout read here.
COOP_DATASETS_DOC = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


def data_root_advice() -> str:
    """How to point promptlab at the folder that holds the datasets (appended to path errors)."""
    return (
        f"Set the folder that holds your datasets with `paths.data_root=/path/to/data` on the command "
        f"line, or with the environment variable {DATA_ROOT_ENV}=/path/to/data."
    )


def missing_data_root(data_root: Path) -> DatasetError:
    return DatasetError(f"data root {data_root} does not exist or is not a folder. {data_root_advice()}")


def missing_dataset_path(
    display_name: str, what: str, path: Path, layout: str, coop_section: str | None = None
) -> DatasetError:
    """Error for an expected file or folder of a dataset that is not there, with the expected tree.

    `coop_section`: the heading of CoOp's DATASETS.md that explains how to download this dataset.
    """
    download = f"Download instructions: {COOP_DATASETS_DOC} (section {coop_section}).\n" if coop_section else ""
    return DatasetError(
        f"{display_name}: {what} not found: expected {path}.\n"
        f"Expected layout under the data root:\n{layout}\n"
        f"{download}If the dataset lives elsewhere: {data_root_advice()}"
    )
