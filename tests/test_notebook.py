"""examples/quickstart.ipynb runs top to bottom (tiny sizes), so it cannot drift from the code."""

import json
import pathlib
import re

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_the_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "TFMARL_NOTEBOOK_SMALL" in "".join(code[0]["source"])  # the parameter cell comes first


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TFMARL_NOTEBOOK_SMALL", "1")  # the kernel inherits the environment
    monkeypatch.setenv("TFMARL_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # pretraining curves, RL curves, the policy comparison
    # Third-party start-up noise went to the log (quiet_startup), not into the notebook.
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert not re.search(r"cuda|onednn|gym|Warning|^[EWI]0000", stderr, re.IGNORECASE | re.MULTILINE), stderr
    assert list((tmp_path / "work" / "logs").glob("startup-*.log"))
    last = notebook.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "recommended (best first)" in last
    saved = list((tmp_path / "work" / "savedmodels").glob("*/saved_model.pb"))
    assert len(saved) == 1
