"""notebooks/evaluate.ipynb runs top to bottom, headless (nbclient), on a tiny demo run, and its table and plot
cells produce tables and plots."""
from __future__ import annotations

import os

from conftest import ROOT


def test_evaluate_notebook_runs_headless(tiny_demo, monkeypatch):
  import nbformat
  from nbclient import NotebookClient
  workdir, _ = tiny_demo
  monkeypatch.setenv("XLM_JAX_WORKDIR", str(workdir))
  monkeypatch.setenv("XLM_JAX_EVAL_SENTENCES", "16")
  monkeypatch.setenv("PYTHONPATH", ROOT)
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as display data
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "evaluate.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()

  tagged = {"plot": [], "table": []}
  for cell in nb.cells:
    for tag in cell.metadata.get("tags", []):
      if tag in tagged:
        tagged[tag].append(cell)
  assert len(tagged["plot"]) == 3 and len(tagged["table"]) == 4
  for cell in tagged["plot"]:
    assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:200]
  markdown = []
  for cell in tagged["table"]:
    tables = [o["data"]["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {})]
    assert any(t.startswith("| ") and "|---|" in t for t in tables), cell.source[:200]
    markdown += tables
  text = "\n".join(markdown)
  assert "acc with translation" in text and "xb given xa" in text      # TLM with/without, on held-out pairs
  assert "| xa-xb | 16 |" in text and "| xb-xa | 16 |" in text and "chrF" in text  # translations scored
  assert "top-1 a->c" in text and "<mask>" in text
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
