"""napari sees the plugin when a real viewer starts (needs a display: Xvfb in CI)."""


def test_viewer_starts_with_the_plugin_registered(make_napari_viewer):
    import npe2
    import numpy as np

    viewer = make_napari_viewer()
    pm = npe2.PluginManager.instance()
    assert pm.get_manifest("napari-promptseg").name == "napari-promptseg"
    layer = viewer.add_image(np.arange(16.0).reshape(4, 4))
    assert layer in viewer.layers
