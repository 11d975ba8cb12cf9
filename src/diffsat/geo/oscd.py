"""The Onera Satellite Change Detection (OSCD) data set in its published layout::

    <root>/Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt                   comma-separated city names
        <city>/imgs_1/*_B01.tif ... *_B12.tif  date 1: 13 single-band uint16 GeoTIFFs (10, 20 and 60 m)
        <city>/imgs_2/...                     date 2
    <root>/Onera Satellite Change Detection dataset - Train Labels/
        <city>/cm/<city>-cm.tif               change map on date 1's 10 m grid (no georeferencing)

Each date's bands are stacked onto its finest (10 m) grid; date 2 is then put on date 1's grid (where the
two differ by a few pixels, as in hongkong and saclay_e, date 2 is resampled onto date 1's grid, the grid the
labels use). The label GeoTIFFs hold 1 (no change) and 2 (change), though the data set's README says 0 and 1;
both codings, and ``cm.png`` (0 / 255), are read as 0 / 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffsat.geo.align import align_pair
from diffsat.geo.raster import BandStack, RasterError, open_raster, stack_from_path

IMAGES = "Onera Satellite Change Detection dataset - Images"
LABELS = "Onera Satellite Change Detection dataset - Train Labels"
DATES = ("imgs_1", "imgs_2")


@dataclass(frozen=True)
class OscdCity:
    """One city: both dates on one grid, and its label file (None for the unlabelled cities)."""

    name: str
    before: BandStack
    after: BandStack
    label: Path | None


def oscd_folders(root: str | Path) -> tuple[Path, Path | None]:
    """``(images folder, labels folder or None)`` of an OSCD root (the folder holding both, or the images
    folder itself)."""
    root = Path(root).expanduser()
    images = root / IMAGES if (root / IMAGES).is_dir() else root
    if not (images / "train.txt").is_file() and not (images / "test.txt").is_file():
        raise RasterError(f"{root}: not an OSCD folder (no '{IMAGES}/train.txt'); point at the folder holding "
                          f"'{IMAGES}'")
    labels = images.parent / LABELS
    return images, labels if labels.is_dir() else None


def is_oscd(root: str | Path) -> bool:
    root = Path(root).expanduser()
    return (root / IMAGES).is_dir() or (root.name == IMAGES and root.is_dir())


def oscd_cities(root: str | Path, list_name: str | None = None) -> list[str]:
    """The cities of ``train.txt`` / ``test.txt`` (``list_name`` ``train`` or ``test``), or every city
    folder (``None``), in the list's order; a listed city without its folder is an error."""
    images, _ = oscd_folders(root)
    if list_name is None:
        return sorted(p.name for p in images.iterdir() if (p / DATES[0]).is_dir())
    path = images / (list_name if list_name.endswith(".txt") else f"{list_name}.txt")
    if not path.is_file():
        raise RasterError(f"{path}: OSCD city list not found (train or test); fix the list")
    names = [n.strip() for n in path.read_text().replace("\n", ",").split(",") if n.strip()]
    absent = [n for n in names if not (images / n / DATES[0]).is_dir()]
    if absent:
        raise RasterError(f"{images / absent[0]}: listed in {path.name} but missing; fix the list or add the city")
    return names


def oscd_city(root: str | Path, city: str, bands: tuple[str | int, ...] | None = None) -> OscdCity:
    """City ``city``'s two dates (the chosen ``bands``, default all 13) on date 1's 10 m grid."""
    images, labels = oscd_folders(root)
    folder = images / city
    if not (folder / DATES[0]).is_dir() or not (folder / DATES[1]).is_dir():
        raise RasterError(f"{folder}: no {DATES[0]}/ and {DATES[1]}/ folders; not an OSCD city")
    before, after = align_pair(stack_from_path(folder / DATES[0], bands), stack_from_path(folder / DATES[1], bands))
    label = labels / city / "cm" / f"{city}-cm.tif" if labels is not None else None
    return OscdCity(city, before, after, label if label is not None and label.is_file() else None)


def read_oscd_label(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W)`` in {0, 1} from an OSCD change map (1/2, 0/1 or 0/255 coding) of ``shape``."""
    with open_raster(path) as ds:
        array = ds.read(1)
    if array.shape != shape:
        raise RasterError(f"{path}: {array.shape[1]}x{array.shape[0]} but the city's 10 m grid is "
                          f"{shape[1]}x{shape[0]}; the label belongs to another image")
    values = set(np.unique(array).tolist())
    if values <= {1, 2}:
        return (array == 2).astype(np.uint8)
    if values <= {0, 1} or values <= {0, 255}:
        return (array > 0).astype(np.uint8)
    raise RasterError(f"{path}: label values {sorted(values)[:6]}; an OSCD change map holds 1/2, 0/1 or 0/255")
