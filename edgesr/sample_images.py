"""Natural RGB images that ship inside installed packages (scikit-image's data folder, and
one photograph in matplotlib's sample data; both are core dependencies).

Used as the default calibration set, the INT8 held-out evaluation set and the bundled model's
training data, so none needs a download. Set5 and other benchmark images are never among them.
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


# Photographs outside scikit-image, by package (only the INT8 held-out evaluation set uses them):
# matplotlib's mpl-data/sample_data/grace_hopper.jpg, a US Navy portrait (public domain).
EXTRA_PHOTOS = {"grace_hopper.jpg": "matplotlib"}


def find_sample_image(name: str) -> Path | None:
    """Where the sample photograph `name` is installed (scikit-image's data folder, or the package
    EXTRA_PHOTOS names), None when it is not there."""
    if name in EXTRA_PHOTOS:
        spec = importlib.util.find_spec(EXTRA_PHOTOS[name])
        if spec is None or not spec.submodule_search_locations:
            return None
        f = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / name
    else:
        f = sample_image_dir() / name
    return f if f.is_file() else None


def sample_images() -> list[Path]:
    """Paths of the bundled natural images (raises if none are available)."""
    folder = sample_image_dir()
    found = [folder / n for n in NAMES if (folder / n).is_file()]
    if not found:
        raise DatasetError(f"no sample images found in {folder}; pass --calib DIR")
    return found
