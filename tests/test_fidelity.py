import math

import numpy as np
import pytest
from PIL import Image

from eval.fidelity import image_fidelity


def _write(root, rel, value):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def test_psnr_and_ssim_against_hand_computed_values(tmp_path):
    for rel in ("00000/samples/0000.png", "00001/samples/0000.png"):
        _write(tmp_path / "ref", rel, 100)
    _write(tmp_path / "same", "00000/samples/0000.png", 100)
    _write(tmp_path / "off", "00000/samples/0000.png", 126)
    _write(tmp_path / "off", "00001/samples/0000.png", 126)
    same = image_fidelity(tmp_path / "ref", tmp_path / "same")
    assert same == {"psnr": 100.0, "ssim": pytest.approx(1.0), "images": 1}  # only common images count
    off = image_fidelity(tmp_path / "ref", tmp_path / "off")
    assert off["psnr"] == pytest.approx(10 * math.log10(1 / (26 / 255) ** 2), rel=1e-4)
    assert off["ssim"] < 1.0 and off["images"] == 2


def test_no_common_images_is_an_error(tmp_path):
    _write(tmp_path / "ref", "00000/samples/0000.png", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in common"):
        image_fidelity(tmp_path / "ref", tmp_path / "empty")
