"""Architecture rules: a light package import and a Qt-free core."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import napari_promptseg

PKG = Path(napari_promptseg.__file__).parent
GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_never_imports_gui_modules():
    offenders = {}
    for path in PKG.rglob("*.py"):
        if "_napari" in path.relative_to(PKG).parts:
            continue
        bad = _imported_roots(path) & set(GUI_MODULES)
        if bad:
            offenders[str(path.relative_to(PKG))] = sorted(bad)
    assert offenders == {}


def test_the_checker_sees_gui_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import qtpy.QtWidgets\nfrom napari.layers import Labels\nimport numpy\n")
    assert _imported_roots(probe) == {"qtpy", "napari", "numpy"}


def test_package_import_is_light():
    code = (
        "import sys, napari_promptseg as ps\n"
        "ps.list_models()\n"
        "heavy = [m for m in ('torch', 'qtpy', 'PyQt6', 'napari', 'segment_anything', 'pooch')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_triton_is_hidden_only_next_to_an_opengl_llvm():
    """Loading triton next to Mesa's libLLVM segfaults napari; the guard hides it only then."""
    code = (
        "import sys, ctypes, ctypes.util\n"
        "from napari_promptseg.models.triton_guard import guard_triton, _llvm_loaded\n"
        "before = guard_triton()\n"
        "assert not before and 'triton' not in sys.modules, 'no LLVM loaded: nothing hidden'\n"
        "name = ctypes.util.find_library('LLVM-15') or ctypes.util.find_library('LLVM')\n"
        "if name is None: print('skip'); raise SystemExit\n"
        "ctypes.CDLL(name)\n"
        "assert _llvm_loaded() and guard_triton() and sys.modules['triton'] is None\n"
        "import segment_anything  # torchvision -> torch._dynamo -> triton: must not crash\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] in ("ok", "skip")
