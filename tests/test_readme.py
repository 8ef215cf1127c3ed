"""The README's Python examples run as written (from a scratch folder, the repo on the path)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _check_resnet_report(out: Path) -> None:
    """The README's own-model example: a whole report of the linen ResNet from ``examples/`` (the one run of a
    linen ResNet report in the tests; ``test_report`` runs its nnx twin through the command line)."""
    from test_report import check_complete

    saved = json.loads((out / "results.json").read_text())
    page, saved = check_complete(out, saved)
    assert saved["settings"]["layer"] == "stage2" and saved["units"]["count"] == 32
    assert len(saved["units"]["shown"]) == 4 and saved["occlusion"]["images"] == 4 * 5
    assert saved["network"]["name"] == "ResNet" and saved["network"]["input_shape"] == [64, 64, 3]
    assert saved["network"]["layers"][:4] == ["stem/conv", "stem/bn", "stem", "stage1/block0/conv1"]
    assert saved["evaluation"]["images"] == 200 and saved["tsne"]["points"] == 200
    assert saved["evaluation"]["class_names"][:2] == ["airplane", "automobile"]
    assert {"confusion.png", "topk.png", "selectivity.png", "occlusion_masks.png", "occlusion_heatmaps.png",
            "trust.png", "sanity.png", "tsne.png", "visualizations.png", "filters_stem_conv.png", "filters_stage1_block0_conv1.png",
            "activations_stem_conv.png", "activations_stage1_block0_conv1.png", "cka.png", "tcav.png"} == set(saved["figures"])
    assert saved["cka"]["layers"] == ["stem", "stage1", "stage2", "stage3", "pool", "head"]  # the top-level layers
    assert saved["tcav"]["runs"] == 5 and saved["tcav"]["layers"] == ["stage1", "stage2"]
    assert "stage2/block0/proj" in page and "not evaluated" not in page
    assert saved["looks_for"]["steps"] == 32 and len(saved["looks_for"]["units"]) == 4


# a folder a block writes -> what it must hold afterwards
OUTPUTS = {"resnet-report": _check_resnet_report}


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2
    assert all(sum(f'"{name}"' in block for block in BLOCKS) == 1 for name in OUTPUTS)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXVIZ_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    for name, check in OUTPUTS.items():
        if f'"{name}"' in BLOCKS[index]:
            check(tmp_path / name)
