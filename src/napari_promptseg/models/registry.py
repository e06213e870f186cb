"""Model zoo: one :class:`ModelSpec` per downloadable checkpoint.

Adding a model is one :data:`REGISTRY` line; adding a model family is one backend module
in ``models/`` plus an entry in :data:`BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelSpec", "REGISTRY", "BACKENDS", "DEMO_MODEL", "get_spec", "list_models"]

# family -> "module:function" that builds a model object from (spec, state_dict, device).
BACKENDS: dict[str, str] = {
    "sam": "napari_promptseg.models.sam.model:build_sam_model",
    "sam2": "napari_promptseg.models.sam2.model:build_sam2_model",
    "sam3": "napari_promptseg.models.sam3.model:build_sam3_model",
}


@dataclass(frozen=True)
class ModelSpec:
    """Description of one checkpoint.

    ``known_hash`` is in pooch's ``"algorithm:hexdigest"`` form (``sha256:…``, ``xxh128:…``);
    for a file on the Hugging Face Hub (``url`` ``https://huggingface.co/<repo>/resolve/<rev>/<file>``,
    downloaded with the user's token, verified by the hub) it is ``"hf:<repo>/<file>"``.
    ``arch`` names the network configuration inside the family's backend (e.g. ``"vit_b"``).
    ``size_mb`` is the download size in megabytes (10**6 bytes), approximate.
    ``pixel_scale``: see :attr:`~.base.PromptableModel.pixel_scale`. ``everything``: segment-everything
    parameters these weights need instead of Meta's defaults, as ``(name, value)`` pairs.
    ``package_file``: for weights that ship inside this package, their path relative to the
    ``napari_promptseg`` folder (then ``url`` is informative only and nothing is downloaded).
    """

    name: str
    family: str
    arch: str
    url: str
    known_hash: str
    size_mb: float
    params: str
    description: str
    licence: str
    package_file: str = ""
    #: model-input pixels per image pixel the model works best at (objects at the sizes it learned);
    #: None: the image's long side fills the input (official SAM, as Meta's predictor)
    pixel_scale: float | None = None
    everything: tuple[tuple[str, object], ...] = ()

    @property
    def packaged(self) -> bool:
        """True when the weights ship inside the package (no download, works offline)."""
        return bool(self.package_file)

    @property
    def filename(self) -> str:
        """File name in the weights cache (unique per model, unlike some upstream names)."""
        ext = self.url.rsplit(".", 1)[-1]
        return f"{self.name}.{ext}"


_SAM = "Apache-2.0"
_MICROSAM = "CC-BY-4.0"
_EBI = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"
_FB = "https://dl.fbaipublicfiles.com/segment_anything"
_FB2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_OURS = "BSD-3-Clause"
_SAM3 = "SAM License (Meta)"

#: the model whose weights ship inside the package (offline default; docs/model_card_promptseg_demo.md)
DEMO_MODEL = "promptseg_demo"

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("vit_b", "sam", "vit_b", f"{_FB}/sam_vit_b_01ec64.pth",
                  "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                  375, "94M", "SAM ViT-B: fastest official SAM, good default on a CPU.", _SAM),
        ModelSpec("vit_l", "sam", "vit_l", f"{_FB}/sam_vit_l_0b3195.pth",
                  "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                  1250, "312M", "SAM ViT-L: more accurate, ~3x slower encoder than ViT-B.", _SAM),
        ModelSpec("vit_h", "sam", "vit_h", f"{_FB}/sam_vit_h_4b8939.pth",
                  "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                  2564, "641M", "SAM ViT-H: the largest official SAM; best with a GPU.", _SAM),
        ModelSpec("vit_b_lm", "sam", "vit_b", f"{_EBI}/diplomatic-bug/1.2/files/vit_b.pt",
                  "xxh128:fe9252a29f3f4ea53c15a06de471e186",
                  375, "94M", "micro-sam ViT-B finetuned for light microscopy (cells, nuclei).",
                  _MICROSAM),
        ModelSpec("vit_l_lm", "sam", "vit_l", f"{_EBI}/idealistic-rat/1.2/files/vit_l.pt",
                  "xxh128:017f20677997d628426dec80a8018f9d",
                  1250, "312M", "micro-sam ViT-L finetuned for light microscopy.", _MICROSAM),
        ModelSpec("vit_b_em_organelles", "sam", "vit_b", f"{_EBI}/noisy-ox/1.2/files/vit_b.pt",
                  "xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
                  375, "94M", "micro-sam ViT-B finetuned for organelles in electron microscopy.",
                  _MICROSAM),
        ModelSpec("vit_l_em_organelles", "sam", "vit_l",
                  f"{_EBI}/humorous-crab/1.2/files/vit_l.pt",
                  "xxh128:810b084b6e51acdbf760a993d8619f2d",
                  1250, "312M", "micro-sam ViT-L finetuned for organelles in electron microscopy.",
                  _MICROSAM),
        ModelSpec("sam2.1_hiera_tiny", "sam2", "sam2.1_hiera_t", f"{_FB2}/sam2.1_hiera_tiny.pt",
                  "sha256:7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
                  156, "38.9M", "SAM 2.1 Hiera-T: fastest SAM 2 (~5x faster encoder than ViT-B on "
                  "a CPU); tracks objects through videos and stacks with memory.", _SAM),
        ModelSpec("sam2.1_hiera_small", "sam2", "sam2.1_hiera_s", f"{_FB2}/sam2.1_hiera_small.pt",
                  "sha256:6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
                  184, "46M", "SAM 2.1 Hiera-S: a little more accurate than Hiera-T.", _SAM),
        ModelSpec("sam2.1_hiera_base_plus", "sam2", "sam2.1_hiera_b+",
                  f"{_FB2}/sam2.1_hiera_base_plus.pt",
                  "sha256:a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
                  324, "80.8M", "SAM 2.1 Hiera-B+: accurate; best with a GPU.", _SAM),
        ModelSpec("sam2.1_hiera_large", "sam2", "sam2.1_hiera_l", f"{_FB2}/sam2.1_hiera_large.pt",
                  "sha256:2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
                  898, "224.4M", "SAM 2.1 Hiera-L: the largest SAM 2; needs a GPU.", _SAM),
        # Hash and size of the packaged file: written by
        # `python -m napari_promptseg.training.export CHECKPOINT --update-registry`.
        ModelSpec(DEMO_MODEL, "sam", "promptseg_demo",
                  "package://napari_promptseg/models/data/promptseg_demo.pt",
                  "sha256:7ca3b95b7ce0ecf918d8df6e98f8d4a47eb5afba81934f2a2b3a98ba973a8f54",
                  4.6, "2.3M", "Small SAM trained on synthetic fluorescence nuclei; ships with the "
                  "package, works offline (demos, tests). Not a replacement for SAM.", _OURS,
                  package_file="models/data/promptseg_demo.pt", pixel_scale=1.0,
                  # its IoU head scores good nuclei masks ~0.7-0.85: Meta's 0.88 / 0.95 keep a third as many
                  everything=(("pred_iou_thresh", 0.7), ("stability_score_thresh", 0.85))),
        # Gated: the user requests access on the Hub page and logs in (`hf auth login`).
        ModelSpec("sam3", "sam3", "sam3", "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt",
                  "hf:facebook/sam3/sam3.pt", 3450, "848M",
                  "SAM 3: finds every instance of a concept, by a noun phrase or example boxes "
                  "(ps.find). Gated on Hugging Face: request access at "
                  "https://huggingface.co/facebook/sam3. Heavy: ~30 s per image on a CPU.", _SAM3),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """Return the spec called ``name``; a clear ``ValueError`` lists the known names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(REGISTRY)
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def list_models() -> list[ModelSpec]:
    """All registered models, in registry order."""
    return list(REGISTRY.values())
