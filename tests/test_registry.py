import pytest

import napari_promptseg as ps
from napari_promptseg.models import get_spec


def test_official_sam_checkpoints_are_registered():
    specs = {s.name: s for s in ps.list_models()}
    assert {"vit_b", "vit_l", "vit_h"} <= set(specs)
    assert specs["vit_b"].url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert specs["vit_b"].known_hash == (
        "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    )
    for s in specs.values():
        assert s.family in ("sam", "sam2", "sam3") and s.description and s.licence and s.size_mb > 0
        # files on the Hugging Face Hub (SAM 3, gated) are checked by the hub's own cache
        assert s.known_hash.split(":")[0] in (("hf",) if s.family == "sam3" else ("sha256", "xxh128"))


def test_cache_file_names_are_unique():
    names = [s.filename for s in ps.list_models()]
    assert len(names) == len(set(names))  # micro-sam's files are all called vit_b.pt upstream


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vit_x'.*vit_b"):
        get_spec("vit_x")
    with pytest.raises(ValueError, match="unknown model"):
        ps.load_model("not_a_model")
