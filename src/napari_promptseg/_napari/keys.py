"""The widget's keys, bound so that they work on the canvas whichever of our layers is active.

napari looks a key up in the active layer's own keymap, then in its class keymap (Points: P =
add mode, Labels: P = paint, Shapes: P = polygon, ...), then in the viewer's. A viewer binding
alone therefore loses to the layer's shortcut. We bind each key on the viewer *and* in the
instance keymaps of the image, points, boxes and preview layers (which come before the class
keymaps); other layers (e.g. a labels layer you paint) keep napari's keys.
"""

from __future__ import annotations

import weakref

__all__ = ["KEYS", "KeyBinder"]

#: key -> (widget method, help text)
KEYS = {
    "K": ("commit", "commit (keep) the objects"),
    "Q": ("clear", "clear the prompts and the preview"),
    "J": ("next_mask", "next candidate mask"),
    "N": ("toggle_negative", "toggle negative points"),
    "O": ("new_object", "new object"),
    "G": ("refine_from_preview", "refine from the painted preview"),
    "U": ("undo", "undo the last commit"),
    "Shift-U": ("redo", "redo"),
    "P": ("propagate", "propagate through the stack"),
    # H, a key napari leaves free (its X, E and B are taken): "halt here"
    "H": ("mark_end", "the current object ends here: absent from this plane, P stops before it"),
    # Shift-E, not E: napari's E is the labels eraser and the shapes ellipse, which stay theirs
    "Shift-E": ("segment_everything", "segment everything into a new labels layer"),
}


class KeyBinder:
    """Binds :data:`KEYS` to ``widget``'s methods on the viewer and on the given layers."""

    def __init__(self, widget) -> None:
        self._ref = weakref.ref(widget)
        self._layers: list = []
        self._handlers = {key: self._handler(method) for key, (method, _) in KEYS.items()}

    def _handler(self, method: str):
        ref = self._ref

        def handler(*_):
            w = ref()
            if w is not None and not w.closed:
                getattr(w, method)()

        handler.__name__ = f"promptseg_{method}"
        return handler

    def bind_viewer(self, viewer) -> None:
        for key, h in self._handlers.items():
            viewer.bind_key(key, h, overwrite=True)

    def bind_layers(self, layers) -> None:
        """Bind on ``layers`` (ours and the image); layers bound before and not listed are freed."""
        layers = [ly for ly in layers if ly is not None]
        for ly in self._layers:
            if not any(ly is other for other in layers):
                self._unbind(ly)
        for ly in layers:
            for key, h in self._handlers.items():
                ly.bind_key(key, h, overwrite=True)
        self._layers = layers

    def _unbind(self, layer) -> None:
        for key, h in self._handlers.items():
            if layer.keymap.get(_coerce(key)) is h:
                layer.bind_key(key, None, overwrite=True)

    def unbind_all(self, viewer) -> None:
        for ly in self._layers:
            self._unbind(ly)
        self._layers = []
        for key in self._handlers:
            viewer.bind_key(key, None, overwrite=True)


def _coerce(key: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)
