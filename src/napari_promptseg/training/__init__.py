"""Training SAM-architecture models (Qt-free; torch is imported inside functions).

- :mod:`.synthetic`: generated fluorescence-like images with instance labels
- :mod:`.sampling`: SAM-style prompts (points, jittered boxes, corrective clicks)
- :mod:`.losses`: focal + dice on masks, MSE on predicted IoU
- :mod:`.loop`: the resumable training loop (a generator of progress dicts)
- :mod:`.train_demo` / :mod:`.export`: the packaged ``promptseg_demo`` model
- :mod:`.finetune`: ``ps.finetune`` and the ``napari-promptseg-finetune`` command

See docs/training.md.
"""
