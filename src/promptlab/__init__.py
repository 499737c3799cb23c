"""promptlab: prompt learning on frozen CLIP models (zero-shot CLIP, CoOp, CoCoOp, KgCoOp, ProGrad, deep and
multi-modal prompts, linear probe, Tip-Adapter).

The public Python API (promptlab.api), imported on first use so that `import promptlab` stays light:

- `compose(overrides)`: the checked config of a job, as promptlab-train composes it;
- `build_run(overrides)`: its parts (frozen CLIP, data, prompt learner, data module), untrained;
- `run(overrides)`: run the job in this process and return its record;
- `load_prompt(path)`: a saved prompt_learner.pt with its backbone -> `PromptClassifier.classify(images)`;
- `read_sweep(path)`: a sweep's tables (`to_markdown`, `to_csv`, `to_latex`, `to_records`, `to_pandas`).
"""

from importlib import metadata
from typing import Any

try:
    # pyproject.toml is the one place the version is written; the installed metadata carries it here.
    __version__ = metadata.version("promptlab")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_API = ("PromptClassifier", "build_run", "compose", "load_prompt", "read_sweep", "run")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from promptlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'promptlab' has no attribute {name!r}")
