"""Loading dataset images safely: size limits against decompression bombs, RGB, clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from cobra_eval.errors import CobraEvalError

#: Images with more pixels than this are refused (a 16k x 16k photo still fits).
MAX_PIXELS = 16_384 * 16_384


class ImageError(CobraEvalError):
    """An image file is missing, unreadable, corrupt or too large."""


def load_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> Any:
    """Open an image as a fully decoded RGB PIL image, or raise ImageError saying why."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} pixels is more than the {max_pixels} allowed "
                        "(a decompression bomb?)"
                    )
                img.load()
                return img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except OSError as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
