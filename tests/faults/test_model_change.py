"""The model changed while a propagation runs: the run stops and says so, the steps its worker had
already computed with the old model are not shown, and a new propagation gives the new model's
masks only, never mixed with the old run's."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_promptseg.core.cancel import Cancelled
from napari_promptseg.core.results import Prediction
from tests.component_model import ComponentModel
from tests.test_session_risks import ManualScheduler, session, two_bars_stack

BAR = 10 * 60  # the old model's mask of a bar
GROWN = 12 * 62 - 4  # the new model's: one pixel wider all round (a cross dilation)


class GrownModel(ComponentModel):
    """Another model: its masks are one pixel wider than :class:`ComponentModel`'s."""

    def __init__(self):
        super().__init__()
        self.checkpoint_id = "components-grown"

    def _predict(self, embedding, prompt, multimask):
        p = super()._predict(embedding, prompt, multimask)
        return Prediction(np.stack([ndimage.binary_dilation(m) for m in p.masks]), p.scores, p.logits)


def areas(s, n):
    return [int((s.preview_plane((z,)) == 1).sum()) for z in range(n)]


def test_a_model_change_stops_the_propagation_and_its_late_steps_are_dropped():
    n = 12
    sch = ManualScheduler()
    s = session(two_bars_stack(n), scheduler=sch, autosave=False)
    sch.run_all("embed")
    s.add_point((15, 40))  # object 1 on plane 0
    sch.run_all("decode")
    assert s.propagate(0)
    job = next(j for j in sch.jobs if j.kind == "propagate")
    it = job.iterate()
    for _ in range(3):  # planes 1-3 are shown
        job.on_step(next(it))
    late = [next(it) for _ in range(3)]  # planes 4-6: computed by the worker, not shown yet
    sch.jobs.remove(job)

    s.set_model(GrownModel())  # the user picks another model now
    assert not s.propagating
    assert any("propagation stopped" in t and "P propagates again" in t for t in s.statuses), s.statuses
    for item in late:  # the old worker's results arrive after the change: dropped
        job.on_step(item)
    job.on_error(Cancelled("cancelled"))
    assert areas(s, n)[1:4] == [BAR] * 3 and areas(s, n)[4:] == [0] * (n - 4)

    sch.run_all("embed")
    sch.run_all("decode")  # the prompted plane is decoded again, with the new model
    assert areas(s, n)[0] == GROWN
    assert s.propagate(0)
    sch.finish()
    assert areas(s, n) == [GROWN] * n  # every plane from the new model, none of the old run left
    ids = s.commit()
    assert len(ids) == 1 and (np.asarray(s.target[...]) == ids[0]).sum() == n * GROWN


def test_a_window_or_image_change_during_a_propagation_stops_it_too():
    sch = ManualScheduler()
    s = session(two_bars_stack(8), scheduler=sch, autosave=False)
    sch.run_all("embed")
    s.add_point((15, 40))
    sch.run_all("decode")
    s.propagate(0)
    sch.step(2)
    s.set_window((0, 40000))
    assert not s.propagating and "propagation stopped" in " ".join(s.statuses)
    s.statuses.clear()
    sch.jobs = [j for j in sch.jobs if j.kind != "propagate"]  # the stopped run's worker ended
    sch.run_all("embed")
    sch.run_all("decode")
    s.propagate(0)
    sch.step(2)
    s.set_image(two_bars_stack(8) + 1)
    assert not s.propagating and "propagation stopped" in " ".join(s.statuses)
