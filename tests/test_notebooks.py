"""Every notebook in notebooks/ runs headless in quick mode and its claims agree; the .ipynb files stay paired.

Each notebook is a jupytext percent-format source notebooks/NN_name.py paired
with notebooks/NN_name.ipynb, which holds the outputs of a full run
(`make notebooks`). Here the .py source is executed by a real Jupyter kernel
(nbclient + ipykernel) with PQDJAX_NOTEBOOK_QUICK=1, which shrinks the sizes, and (slow, in .ci/run) at
the full sizes; every notebook ends by printing one `CHECK <claim>: agrees|DISAGREES`
line per claim it tests.
"""

import glob
import os
import re

import jupytext
import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9][0-9]_*.py")))
CHECK_LINE = re.compile(r"^CHECK (.+): (agrees|DISAGREES)$", re.MULTILINE)


def _stream_text(notebook) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("output_type") == "stream"
    )


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def test_there_are_notebooks():
    assert len(SOURCES) >= 2, SOURCES


@pytest.fixture(scope="module")
def shared_run_workdir(tmp_path_factory):
    """One small finished run for the notebooks that read a workdir: the runlocal config on a test IDX dataset."""
    from conftest import write_idx_dataset

    from pqdjax import runs

    root = tmp_path_factory.mktemp("notebook_run")
    data_dir = str(root / "data")
    os.makedirs(data_dir)
    write_idx_dataset(data_dir)
    os.environ["PQDJAX_FASHION_MNIST_DIR"] = data_dir  # read by configs/default.py's 'auto' source
    try:
        # a missing workdir makes find_or_make_run run the runlocal config into a temporary folder
        workdir = runs.find_or_make_run(str(root / "missing"))
    finally:
        del os.environ["PQDJAX_FASHION_MNIST_DIR"]
    assert runs.is_finished(workdir)
    return workdir


def _execute_and_check_claims(source: str, mode: str, monkeypatch, request) -> None:
    """Runs the notebook `source` headless in `mode` ('quick' or 'full') and asserts every CHECK line agrees."""
    notebook = jupytext.read(source)
    if mode == "quick":
        monkeypatch.setenv("PQDJAX_NOTEBOOK_QUICK", "1")
    else:
        monkeypatch.delenv("PQDJAX_NOTEBOOK_QUICK", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as on a user's laptop
    if "PQDJAX_RUN_WORKDIR" in jupytext.writes(notebook, "py:percent"):
        monkeypatch.setenv("PQDJAX_RUN_WORKDIR", request.getfixturevalue("shared_run_workdir"))
    client = nbclient.NotebookClient(notebook, timeout=None, startup_timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    text = _stream_text(notebook)
    assert f"mode: {mode}" in text, f"{_name(source)} did not run in {mode} mode:\n{text[:500]}"
    checks = CHECK_LINE.findall(text)
    assert checks, f"{_name(source)} printed no CHECK lines:\n{text[-2000:]}"
    disagreeing = [claim for claim, verdict in checks if verdict != "agrees"]
    assert not disagreeing, f"{_name(source)}: claims that disagree in {mode} mode: {disagreeing}"
    assert any(output.get("data", {}).get("image/png") for cell in notebook.cells for output in cell.get("outputs", [])), "no PNG output"


@pytest.mark.parametrize("source", SOURCES, ids=_name)
def test_notebook_runs_and_its_claims_agree(source, monkeypatch, request):
    _execute_and_check_claims(source, "quick", monkeypatch, request)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=_name)
def test_notebook_claims_agree_in_full_mode(source, monkeypatch, request):
    """The full sizes `make notebooks` runs, executed here rather than read from the committed outputs, so a change
    that breaks a claim made only at full size (more K, more dimensions, more samples) fails. Notebook 05 reads the
    shared runlocal run, with all its IPCs."""
    _execute_and_check_claims(source, "full", monkeypatch, request)


@pytest.mark.parametrize("source", SOURCES, ids=_name)
def test_executed_notebook_is_paired_with_its_source(source):
    """The committed .ipynb has the .py's cells, was fully executed without errors, and keeps its plots."""
    paired = os.path.splitext(source)[0] + ".ipynb"
    assert os.path.exists(paired), f"{paired} is missing; run `make notebooks`."
    executed = nbformat.read(paired, as_version=4)
    expected = jupytext.read(source)
    sources = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
    assert sources(executed) == sources(expected), f"{paired} is out of date with its .py source; run `make notebooks`."
    code_cells = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), f"{paired} has cells that were not executed."
    outputs = [o for c in code_cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{paired} holds an error output."
    assert any(o.get("data", {}).get("image/png") for o in outputs), f"{paired} holds no PNG figure."
    text = _stream_text(executed)
    assert CHECK_LINE.findall(text) and "DISAGREES" not in text, f"{paired}: the full run's claims do not all agree."
    assert "mode: full" in text and "mode: quick" not in text, f"{paired} must hold the outputs of a full (not quick) run."


def test_load_run_names_the_fix_for_a_folder_without_a_run(tmp_path):
    from pqdjax import runs

    with pytest.raises(FileNotFoundError, match="no finished run"):
        runs.load_run(str(tmp_path))
