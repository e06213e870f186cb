"""A plain `pip install` (no extras) is headless: no napari, Qt, magicgui or vispy, and the API runs.

Builds a fresh virtual environment from the package registries (as `.ci/run` does: torch first,
then sam2 built against it), about two minutes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import importlib.util
import numpy as np
import napari_promptseg as ps
from napari_promptseg.sample import nuclei_image

gui = [m for m in ("napari", "qtpy", "magicgui", "vispy", "PyQt6", "PyQt5", "PySide6", "superqt")
       if importlib.util.find_spec(m) is not None]
assert not gui, f"GUI packages installed: {gui}"
model = ps.load_model("promptseg_demo", device="cpu")
img, lab = nuclei_image((128, 160), n=8)
stack = np.stack([img, img, img])
r, c = np.argwhere(lab == 1).mean(axis=0).round().astype(int)
labels = ps.propagate(model, stack, {1: [{"points": [[r, c]]}]})
assert labels.shape == (3, 128, 160) and (labels == 1).sum(axis=(1, 2)).min() > 0
found = ps.segment_everything(model, img, points_per_side=8)
assert found.labels.shape == (128, 160) and found.objects
np.save("stack.npy", stack)
print("HEADLESS OK")
'''


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_plain_install_has_no_gui_and_the_api_runs(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {**os.environ, "SAM2_BUILD_CUDA": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)

    def pip(*args):
        out = subprocess.run([py, "-m", "pip", "install", "-q", *args], env=env, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr[-3000:]

    pip("torch>=2.5", "torchvision", "setuptools", "wheel")
    pip("--no-build-isolation", "sam2==1.1.0")
    pip(str(ROOT))  # the package alone, no extras
    out = subprocess.run([py, "-c", PROBE], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "HEADLESS OK" in out.stdout, out.stderr[-3000:]
    cli = subprocess.run([str(venv / "bin" / "promptseg"), "embed", "stack.npy", "--model", "promptseg_demo",
                          "--device", "cpu", "--out", "stack.zarr"], env=env, capture_output=True,
                         text=True, cwd=tmp_path)
    assert cli.returncode == 0 and "3 of 3 planes" in cli.stdout, cli.stderr[-3000:]
    demo = subprocess.run([str(venv / "bin" / "napari-promptseg-demo")], env=env, capture_output=True,
                          text=True)
    assert demo.returncode != 0 and 'pip install "napari-promptseg[qt]"' in demo.stderr
    assert "Traceback" not in demo.stderr
