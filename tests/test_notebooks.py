"""The notebooks run top to bottom on a published night and are committed without outputs.

Each notebook is executed in a fresh `python3` kernel whose environment points Mia's settings
(`MIA_DATA_DIR`, whose own MLflow store holds the night's models, and any other override of the
night) at the session's `night_run`, so the notebooks read that night instead of building a world.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import TINY_LAST_DAY

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_SECONDS = 300
FALLBACK_MESSAGE = "has no published night"

# Per notebook: texts its outputs must contain, and how many figures it must draw.
EXPECTED: dict[str, tuple[tuple[str, ...], int]] = {
    "01_features.ipynb": (
        ("identical to the stored one", "drift of", "labels of", "subscriber x category rows"),
        2,
    ),
    "02_models.ipynb": (
        ("mia-offers v1", "categories with a model", "blend on the holdout", "cosine_similarity"),
        2,
    ),
    "03_offers_and_audiences.ipynb": (
        ("catalog offers eligible", "audiences,", "control subscribers", "failed_rules"),
        2,
    ),
}


def _names(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _texts(notebook: nbformat.NotebookNode) -> str:
    """Every text a notebook printed or displayed, in order."""
    parts = []
    for cell in _code_cells(notebook):
        for output in cell.outputs:
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def _figures(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in _code_cells(notebook)
        for output in cell.outputs
    )


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime) of every file below `root`."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_the_expected_notebooks_are_there():
    assert _names(NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_names(NOTEBOOKS))
def test_committed_notebook_is_clean(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == KERNEL
    dirty = [
        cell.id
        for cell in _code_cells(notebook)
        if cell.outputs or cell.execution_count is not None
    ]
    assert dirty == [], f"{path.name}: clear the outputs of cells {dirty} before committing"
    # Library logic lives in the packages; cells only call it.
    defining = [
        cell.id
        for cell in _code_cells(notebook)
        if re.search(r"^\s*(def|class) ", cell.source, re.MULTILINE)
    ]
    assert defining == [], f"{path.name}: cells {defining} define functions or classes"


def test_notebooks_share_one_setup_cell():
    first_cells = {
        path.name: _code_cells(nbformat.read(path, as_version=4))[0].source for path in NOTEBOOKS
    }
    assert len(set(first_cells.values())) == 1, "the first code cells differ between notebooks"
    setup = next(iter(first_cells.values()))
    assert "load_settings()" in setup and FALLBACK_MESSAGE in setup


@dataclass(frozen=True)
class ExecutedNotebook:
    """A notebook after execution, and what the run left behind."""

    notebook: nbformat.NotebookNode
    data_root_changed: bool
    working_directory_files: list[str]

    @property
    def texts(self) -> str:
        return _texts(self.notebook)


@pytest.fixture(scope="module")
def run_notebook(night_run, tmp_path_factory) -> Callable[[str], ExecutedNotebook]:
    """Execute a notebook (once per module) in a kernel pointed at the published night."""
    executed: dict[str, ExecutedNotebook] = {}

    def run(name: str) -> ExecutedNotebook:
        if name not in executed:
            working_directory = tmp_path_factory.mktemp(Path(name).stem)
            with pytest.MonkeyPatch.context() as patch:
                patch.delenv("MIA_CONFIG", raising=False)
                patch.setenv("MIA_DATA_DIR", str(night_run.data_dir))
                for setting, value in night_run.overrides.items():
                    patch.setenv(f"MIA_{setting.upper()}", str(value))
                before = _files(night_run.data_dir)
                notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
                NotebookClient(
                    notebook,
                    kernel_name=KERNEL,
                    timeout=CELL_TIMEOUT_SECONDS,
                    resources={"metadata": {"path": str(working_directory)}},
                ).execute()
            executed[name] = ExecutedNotebook(
                notebook,
                data_root_changed=_files(night_run.data_dir) != before,
                working_directory_files=sorted(p.name for p in working_directory.iterdir()),
            )
        return executed[name]

    return run


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_names(NOTEBOOKS))
def test_notebook_runs_on_the_published_night(path, run_notebook):
    run = run_notebook(path.name)  # raises CellExecutionError, naming the cell, on any error
    assert FALLBACK_MESSAGE not in run.texts, "the notebook built its own world instead"
    assert f"latest published night: {TINY_LAST_DAY}" in run.texts
    expected_texts, expected_figures = EXPECTED[path.name]
    missing = [text for text in expected_texts if text not in run.texts]
    assert missing == [], f"{path.name}: outputs lack {missing}"
    assert _figures(run.notebook) >= expected_figures
    assert all(cell.execution_count for cell in _code_cells(run.notebook))
    assert not run.data_root_changed, "the notebook wrote into the data root"
    assert run.working_directory_files == []


def test_models_notebook_reproduces_the_logged_holdout_auc(run_notebook):
    """The calibration holdout rebuilt from labels and bundle scores is training's own holdout."""
    found = re.search(
        r"ROC AUC ([0-9.]+) \(logged ([0-9.]+)\)", run_notebook("02_models.ipynb").texts
    )
    assert found is not None
    assert found.group(1) == found.group(2)


def test_features_notebook_finds_no_point_in_time_leak(run_notebook):
    """An earlier snapshot rebuilt with every later day ingested equals the stored one."""
    texts = run_notebook("01_features.ipynb").texts
    assert "identical to the stored one" in texts
    assert "DIFFERENT" not in texts
