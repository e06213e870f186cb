"""The npe2 manifest is valid, registered through the entry point, and every python_name imports."""

import importlib
from importlib.metadata import entry_points

import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_validates_and_is_discoverable():
    pm = npe2.PluginManifest.from_distribution("napari-promptseg")
    assert pm.name == "napari-promptseg"
    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-promptseg"]
    assert eps and eps[0].value == "napari_promptseg:napari.yaml"
    for cmd in pm.contributions.commands or []:
        module, attr = cmd.python_name.split(":")
        assert hasattr(importlib.import_module(module), attr)


def test_npe2_validate_cli():
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", "napari-promptseg"])
    assert result.exit_code == 0, result.output
