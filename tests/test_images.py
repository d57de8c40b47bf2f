"""Images are loaded safely: RGB out, one clear error for missing, corrupt or oversized files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cobra_eval.images import ImageError, load_image


def test_any_mode_comes_back_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.new("LA", (5, 4), (128, 255)).save(path)
    image = load_image(path)
    assert (image.mode, image.size) == ("RGB", (5, 4))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "image file not found"),
        (
            lambda p: (p.write_bytes(b"not an image at all"), p)[1],
            "not an image file Pillow can read",
        ),
        (lambda p: _truncated_png(p), "corrupt or truncated image"),
    ],
    ids=["missing", "not-an-image", "truncated"],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "bad.png")
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageError, match="300x200 pixels is more than the 10000 allowed"):
        load_image(path, max_pixels=10_000)


def _truncated_png(path: Path) -> Path:
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
