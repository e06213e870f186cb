"""The session's status line (plain text, no Qt)."""

from __future__ import annotations

from napari_promptseg.session.planes import PlaneDecode, fmt, ids_in, offered

__all__ = ["describe", "model_note", "store_note", "status_line"]


def model_note(model) -> str:
    from napari_promptseg.models.registry import DEMO_MODEL

    return ", the offline demo model: pick another and 'Load model' for real work" if (
        model is not None and model.name == DEMO_MODEL) else ""


def store_note(session) -> str:
    """``; embeddings from stack.zarr`` while a store is used (and whether the shown plane's
    pixels differ from the stored ones)."""
    store = getattr(session, "embeddings_store", None)
    if store is None:
        return ""
    stack = session.stack
    if stack is not None and session.plane in stack.store_problems:
        return (f"; embeddings from {store.path.name}, but this plane's pixels differ from the stored "
                "ones: embedded by the model")
    return f"; embeddings from {store.path.name}"


def status_line(session, decoded) -> str:
    """:meth:`~.core.AnnotationSession.describe`: the masks of the displayed plane when it is
    prompted; on a propagated plane its objects; else the masks of the plane prompted last.
    decoded: the session's ``{plane: PlaneDecode}``."""
    here = decoded.get(session.plane)
    if here is not None and any(d.pred is not None for d in here.objects.values()):
        return describe(session, here, session.plane)
    shown = len(ids_in(session.preview_plane())) if session.preview is not None else 0  # read once
    return describe(session, None if shown else decoded.get(session.active), session.active, shown)


def describe(session, dec: PlaneDecode | None, plane: tuple[int, ...], shown: int = 0) -> str:
    """``object 3 · 2 objects on plane 7: masks [0.90] 0.60 (J: next); score 0.95. K: commit.``

    dec: the decoded objects of ``plane``; shown: how many objects the displayed plane's preview
    holds (said when ``dec`` has none, e.g. on a propagated plane)."""
    head = f"object {session.current_object}"
    objs = [(i, d) for i, d in (dec.objects.items() if dec is not None else ()) if d.pred is not None]
    if not objs:
        where = f" on plane {fmt(session.plane)}" if session.plane else ""
        n = shown
        if session.model is None:
            return f"{head}: choose a model."
        if not session.ready:
            return f"{head}: embedding{where}…"
        if n:
            return (f"{head} · plane {fmt(session.plane)}: {n} propagated object{'s' * (n > 1)} in the "
                    "preview. Correct it with points (choose the object first) and press P again; K commits.")
        model = f" ({session.model.name}{model_note(session.model)}{store_note(session)})"
        return (f"{head}: ready{model}{where}: click on the object (Shift-click: background) or draw a box; "
                "O: new object.")
    parts = []
    for i, d in objs:
        o = offered(d.pred, d.choice)  # the candidates J cycles through
        if len(o) > 1:
            scores = [f"[{d.pred.scores[k]:.2f}]" if k == d.choice else f"{d.pred.scores[k]:.2f}" for k in o]
            parts.append(f"{i}: masks {' '.join(scores)} (J: next)")
        else:
            parts.append(f"{i}: score {d.pred.scores[d.choice]:.2f}")
    where = f" on plane {fmt(plane)}" if plane else ""
    n = len(objs)
    return f"{head} · {n} object{'s' * (n > 1)}{where} — " + "; ".join(parts) + ". K: commit."
