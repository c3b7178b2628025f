import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_notebook_runs_and_saves_coco(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    found = re.search(r"(\d+) nuclei, best scores", outputs)
    assert found and int(found.group(1)) > 20  # the sample holds ~70 nuclei
    assert "nuclei.json" in outputs and "nuclei.geojson" in outputs
