"""Natural RGB images that ship inside an installed package (scikit-image's data folder).

Used as the default calibration set and the bundled model's training data, so neither
needs a download. Set5 and other benchmark images are never among them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import DatasetError

# RGB photographs in skimage/data (public domain / CC0 per its README).
NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
         "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg")


def sample_image_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("scikit-image is not installed; it provides the default sample images "
                           "(pip install scikit-image), or pass --calib DIR")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_images() -> list[Path]:
    """Paths of the bundled natural images (raises if none are available)."""
    folder = sample_image_dir()
    found = [folder / n for n in NAMES if (folder / n).is_file()]
    if not found:
        raise DatasetError(f"no sample images found in {folder}; pass --calib DIR")
    return found
