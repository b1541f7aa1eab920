"""Executes notebooks in full and writes each one's outputs (plots included) into its paired .ipynb.

    python notebooks/execute.py                       # every notebooks/NN_*.py
    python notebooks/execute.py notebooks/02_*.py     # some of them

Each jupytext percent-format source notebooks/NN_name.py is run top to bottom by
a Jupyter kernel (nbclient + ipykernel) from the repository root, and the
executed notebook is written to notebooks/NN_name.ipynb.
"""

import glob
import os
import sys
import time

import jupytext
import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def execute(source: str, timeout: int = 1800) -> str:
    notebook = jupytext.read(source)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    target = os.path.splitext(source)[0] + ".ipynb"
    tmp = target + ".tmp"
    nbformat.write(notebook, tmp)
    os.replace(tmp, target)
    print(f"{target}: executed in {time.perf_counter() - start:.0f} s", flush=True)
    return target


if __name__ == "__main__":
    if os.environ.get("PQDJAX_NOTEBOOK_QUICK") == "1":
        sys.exit("unset PQDJAX_NOTEBOOK_QUICK: the committed notebooks hold the outputs of full runs.")
    for source in sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9][0-9]_*.py"))):
        execute(source)
