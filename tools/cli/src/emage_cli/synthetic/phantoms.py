"""Synthetic anatomy as numpy arrays: pure functions of their parameters and a seeded generator.

Each phantom is built from a few analytic shapes (ellipses, ellipsoids, rings) painted only inside their
bounding boxes, so a 220-slice 512x512 CT volume takes well under a second and multiplanar reformats show
recognisable organs. None of this is anatomy-accurate; it is meant to look plausible in a viewer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
from numpy.typing import NDArray

Image = NDArray[np.float32]


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in normalised coordinates: x, y in [-1, 1] across the field of view, z in
    [0, 1] from the first slice to the last. ``value`` replaces what is underneath, or adds to it."""

    cx: float
    cy: float
    cz: float
    rx: float
    ry: float
    rz: float
    value: float
    additive: bool = False

    def section(self, z: float) -> tuple[float, float] | None:
        """Radii (rx, ry) of the cross-section at height ``z``, or None when the plane misses it."""
        dz = (z - self.cz) / self.rz
        if abs(dz) >= 1.0:
            return None
        scale = float(np.sqrt(1.0 - dz * dz))
        return self.rx * scale, self.ry * scale


def paint_ellipse(
    image: Image, cx: float, cy: float, rx: float, ry: float, value: float, *, additive: bool = False
) -> None:
    """Paint a filled ellipse given in normalised coordinates onto ``image``, in place.

    Only the ellipse's bounding box is evaluated, which keeps many small shapes cheap on large images.
    """
    rows, columns = image.shape
    x0 = max(int((cx - rx + 1.0) / 2.0 * columns), 0)
    x1 = min(int((cx + rx + 1.0) / 2.0 * columns) + 2, columns)
    y0 = max(int((cy - ry + 1.0) / 2.0 * rows), 0)
    y1 = min(int((cy + ry + 1.0) / 2.0 * rows) + 2, rows)
    if x0 >= x1 or y0 >= y1 or rx <= 0 or ry <= 0:
        return
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / columns * 2.0 - 1.0
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / rows * 2.0 - 1.0
    inside = ((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1.0
    region = image[y0:y1, x0:x1]
    if additive:
        region[inside] += value
    else:
        region[inside] = value


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> Image:
    """Low-frequency texture in [0, 1]: random values on a coarse grid, bilinearly enlarged to ``shape``."""
    rows, columns = shape
    grid = PIL.Image.fromarray(rng.random((cells + 1, cells + 1), dtype=np.float32), mode="F")
    enlarged: Image = np.asarray(
        grid.resize((columns, rows), PIL.Image.Resampling.BILINEAR), dtype=np.float32
    )
    return enlarged


# --- CT: a chest-abdomen-pelvis in Hounsfield units ------------------------------------------------------

AIR_HU = -1000.0

_CT_ORGANS: tuple[Ellipsoid, ...] = (
    # Lungs (upper 45 %), then the heart between them, with contrast in the left ventricle.
    Ellipsoid(-0.38, -0.02, 0.22, 0.30, 0.42, 0.26, -860.0),
    Ellipsoid(0.36, -0.02, 0.22, 0.28, 0.42, 0.26, -860.0),
    Ellipsoid(0.10, 0.02, 0.32, 0.27, 0.24, 0.12, 45.0),
    Ellipsoid(0.16, 0.04, 0.32, 0.10, 0.09, 0.06, 260.0),
    # Liver with a hypodense lesion, spleen, kidneys (cortical enhancement), bladder.
    Ellipsoid(-0.40, 0.02, 0.52, 0.42, 0.40, 0.15, 62.0),
    Ellipsoid(-0.32, -0.08, 0.50, 0.06, 0.05, 0.025, 18.0),
    Ellipsoid(0.52, 0.18, 0.50, 0.15, 0.18, 0.08, 52.0),
    Ellipsoid(-0.34, 0.36, 0.62, 0.10, 0.13, 0.07, 160.0),
    Ellipsoid(0.34, 0.36, 0.62, 0.10, 0.13, 0.07, 160.0),
    Ellipsoid(0.0, 0.10, 0.95, 0.22, 0.18, 0.06, 8.0),
    # Iliac wings: cortical shell around cancellous bone.
    Ellipsoid(-0.52, 0.25, 0.92, 0.20, 0.30, 0.16, 650.0),
    Ellipsoid(0.52, 0.25, 0.92, 0.20, 0.30, 0.16, 650.0),
    Ellipsoid(-0.52, 0.25, 0.92, 0.17, 0.27, 0.14, 240.0),
    Ellipsoid(0.52, 0.25, 0.92, 0.17, 0.27, 0.14, 240.0),
)


def _ct_bowel(rng: np.random.Generator) -> tuple[Ellipsoid, ...]:
    loops = []
    for _ in range(14):
        cx, cy = rng.uniform(-0.45, 0.45), rng.uniform(-0.25, 0.25)
        cz, r = rng.uniform(0.66, 0.9), rng.uniform(0.05, 0.09)
        loops.append(Ellipsoid(cx, cy, cz, r, r * 0.8, r * 0.5, 12.0))
        loops.append(Ellipsoid(cx, cy - r * 0.3, cz, r * 0.6, r * 0.4, r * 0.3, AIR_HU))
    return tuple(loops)


def ct_volume(slices: int, size: int, rng: np.random.Generator) -> Iterator[NDArray[np.int16]]:
    """Axial slices (head to feet) of a contrast-enhanced chest-abdomen-pelvis in HU, one at a time.

    Bones (vertebrae with discs, ribs, pelvis) vary along z so that sagittal and coronal reformats show a
    spine and a rib cage; Gaussian quantum noise (sd 12 HU) is drawn once and cycled.
    """
    organs = _CT_ORGANS + _ct_bowel(rng)
    noise = rng.normal(0.0, 12.0, size=(6, size, size)).astype(np.float32)
    for index in range(slices):
        z = (index + 0.5) / slices
        image = np.full((size, size), AIR_HU, dtype=np.float32)
        # Patient table, then the body: subcutaneous fat around soft tissue, slightly wider at the pelvis.
        image[int(size * 0.86) : int(size * 0.88), int(size * 0.12) : int(size * 0.88)] = 180.0
        widen = 0.05 * z
        paint_ellipse(image, 0.0, 0.05, 0.86 + widen, 0.64, -95.0)
        paint_ellipse(image, 0.0, 0.05, 0.79 + widen, 0.57, 38.0)
        for organ in organs:
            radii = organ.section(z)
            if radii is not None:
                paint_ellipse(image, organ.cx, organ.cy, *radii, organ.value, additive=organ.additive)
        # Aorta with contrast, all the way down to the bifurcation.
        if z < 0.8:
            paint_ellipse(image, -0.06, 0.28, 0.055, 0.055, 250.0)
        # Ribs: a bony ring in the chest, present in bands along z (one band per rib).
        if z < 0.55 and np.sin(z * 2 * np.pi * 12.0) > 0.35:
            ring = np.zeros_like(image)
            paint_ellipse(ring, 0.0, 0.04, 0.80, 0.56, 1.0)
            paint_ellipse(ring, 0.0, 0.04, 0.76, 0.52, 0.0)
            ring[int(size * 0.70) :, :] = 0.0
            image[ring > 0] = 820.0
        # Vertebra (cortex, cancellous body, canal) or the intervertebral disc between two vertebrae.
        if (z * 24.0) % 1.0 < 0.18:
            paint_ellipse(image, 0.0, 0.46, 0.11, 0.09, 85.0)
        else:
            paint_ellipse(image, 0.0, 0.46, 0.12, 0.10, 900.0)
            paint_ellipse(image, 0.0, 0.46, 0.10, 0.08, 280.0)
            paint_ellipse(image, 0.0, 0.64, 0.07, 0.05, 700.0)
        paint_ellipse(image, 0.0, 0.60, 0.045, 0.035, 25.0)
        image += noise[index % noise.shape[0]]
        np.clip(image, -1024.0, 3071.0, out=image)
        yield image.astype(np.int16)


# --- MR: a T1- or T2-weighted brain ----------------------------------------------------------------------

#: Signal of each tissue as (T1-weighted, T2-weighted) intensities on a 12-bit scale.
_MR_TISSUES: dict[str, tuple[float, float]] = {
    "scalp": (1700.0, 900.0),
    "skull": (120.0, 100.0),
    "csf": (380.0, 2400.0),
    "grey": (1050.0, 1350.0),
    "white": (1450.0, 900.0),
    "ventricle": (330.0, 2500.0),
    "lesion": (900.0, 2000.0),
}


def mr_brain(
    slices: int, size: int, weighting: str, rng: np.random.Generator
) -> Iterator[NDArray[np.uint16]]:
    """Axial slices (inferior to superior) of a brain, ``weighting`` "T1" or "T2", on 12 bits.

    A smooth multiplicative bias field and Rician-like noise give the images an MR look.
    """
    pick = 0 if weighting == "T1" else 1
    tissue = {name: values[pick] for name, values in _MR_TISSUES.items()}
    shapes = (
        Ellipsoid(0.0, 0.0, 0.5, 0.74, 0.92, 0.62, tissue["scalp"]),
        Ellipsoid(0.0, 0.0, 0.5, 0.70, 0.88, 0.59, tissue["skull"]),
        Ellipsoid(0.0, 0.0, 0.5, 0.66, 0.84, 0.56, tissue["csf"]),
        Ellipsoid(0.0, 0.0, 0.5, 0.63, 0.81, 0.53, tissue["grey"]),
        Ellipsoid(0.0, 0.02, 0.5, 0.52, 0.70, 0.44, tissue["white"]),
        Ellipsoid(-0.12, -0.05, 0.55, 0.07, 0.30, 0.16, tissue["ventricle"]),
        Ellipsoid(0.12, -0.05, 0.55, 0.07, 0.30, 0.16, tissue["ventricle"]),
        Ellipsoid(0.0, 0.35, 0.45, 0.05, 0.06, 0.05, tissue["ventricle"]),
        Ellipsoid(0.30, -0.30, 0.62, 0.07, 0.06, 0.05, tissue["lesion"]),
    )
    bias = (0.85 + 0.3 * smooth_noise(rng, (size, size), 3)).astype(np.float32)
    noise = rng.normal(0.0, 25.0, size=(4, 2, size, size)).astype(np.float32)
    for index in range(slices):
        z = 0.12 + 0.8 * (index + 0.5) / slices
        image = np.zeros((size, size), dtype=np.float32)
        for shape in shapes:
            radii = shape.section(z)
            if radii is not None:
                paint_ellipse(image, shape.cx, shape.cy, *radii, shape.value)
        image *= bias
        real, imaginary = noise[index % noise.shape[0]]
        image = np.sqrt((image + real) ** 2 + imaginary**2)
        yield np.clip(image, 0.0, 4095.0).astype(np.uint16)


# --- CR: a posteroanterior chest radiograph ---------------------------------------------------------------


def chest_radiograph(rows: int, columns: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A PA chest radiograph for presentation (MONOCHROME2: bone white, direct exposure black), 8 bits.

    Drawn at a quarter of the size and enlarged: radiographs are smooth at that scale anyway.
    """
    small = np.zeros((rows // 4, columns // 4), dtype=np.float32)
    paint_ellipse(small, 0.0, 0.25, 0.82, 1.15, 0.55)  # soft tissue of the trunk
    paint_ellipse(small, -0.36, -0.05, 0.30, 0.62, 0.22)  # right lung (left of the image)
    paint_ellipse(small, 0.36, -0.05, 0.30, 0.62, 0.22)
    paint_ellipse(small, 0.12, 0.25, 0.30, 0.26, 0.62)  # heart
    paint_ellipse(small, -0.30, 0.62, 0.38, 0.14, 0.60)  # diaphragm domes
    paint_ellipse(small, 0.32, 0.66, 0.36, 0.12, 0.60)
    small[int(small.shape[0] * 0.06) :, int(small.shape[1] * 0.47) : int(small.shape[1] * 0.53)] += (
        0.18  # spine
    )
    ribs = np.zeros_like(small)
    for rib in range(10):
        cy = -0.62 + rib * 0.12
        for side in (-1.0, 1.0):
            paint_ellipse(ribs, side * 0.30, cy, 0.34, 0.10, 0.16)
            paint_ellipse(ribs, side * 0.30, cy + 0.02, 0.32, 0.08, 0.0)
    small += ribs
    for side in (-1.0, 1.0):  # clavicles
        paint_ellipse(small, side * 0.30, -0.74, 0.26, 0.03, 0.75)
    small += 0.06 * smooth_noise(rng, small.shape, 12)
    enlarged = np.kron(small, np.ones((4, 4), dtype=np.float32))
    image = np.zeros((rows, columns), dtype=np.float32)
    image[: enlarged.shape[0], : enlarged.shape[1]] = enlarged
    image += rng.normal(0.0, 0.015, size=image.shape).astype(np.float32)
    radiograph: NDArray[np.uint8] = np.clip(image * 255.0, 0.0, 255.0).astype(np.uint8)
    return radiograph


# --- MG: a breast for presentation ------------------------------------------------------------------------


def mammogram(
    rows: int, columns: int, *, laterality: str, view: str, rng: np.random.Generator
) -> NDArray[np.uint16]:
    """A breast for presentation on 12 bits, chest wall on the right of the image for ``laterality`` "R"
    and on the left for "L"; the MLO ``view`` shows the pectoral muscle in the upper corner."""
    ys = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    distance = np.linspace(0.0, 1.0, columns, dtype=np.float32)[None, :]  # from the chest wall
    # Breast outline: a half-ellipse against the chest wall, its thickness falling off to the skin line.
    radius = (distance / 0.78) ** 2 + (ys / 0.85) ** 2
    breast = radius < 1.0
    thickness = np.sqrt(np.clip(1.0 - radius, 0.0, 1.0))
    texture = smooth_noise(rng, (rows, columns), 24) * 0.6 + smooth_noise(rng, (rows, columns), 80) * 0.4
    glandular = np.clip((texture - 0.45) * 3.0, 0.0, 1.0) * np.clip(1.2 - distance * 1.2, 0.0, 1.0)
    image = np.where(breast, 900.0 + 1400.0 * thickness + 1300.0 * glandular, 60.0).astype(np.float32)
    if view == "MLO":
        pectoral = distance < (0.35 - 0.5 * (ys + 1.0))
        image[pectoral & breast] = 3000.0
    for _ in range(6):  # a cluster of microcalcifications
        y = int(rows * rng.uniform(0.40, 0.48))
        x = int(columns * rng.uniform(0.30, 0.36))
        image[y : y + 3, x : x + 3] = 3900.0
    image += rng.normal(0.0, 20.0, size=image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 4095.0)
    if laterality == "R":
        image = image[:, ::-1]
    return np.ascontiguousarray(image).astype(np.uint16)


# --- US: a cardiac cine loop in a sector ------------------------------------------------------------------


def echocardiogram(
    frames: int, rows: int, columns: int, rng: np.random.Generator
) -> Iterator[NDArray[np.uint8]]:
    """RGB frames of a parasternal-like view: a beating ventricle in a 80° sector with speckle.

    The speckle pattern is fixed (it moves with the tissue in real life; here the tissue barely moves), the
    ventricle's cavity breathes with the cardiac cycle, and a colour scale bar sits beside the sector.
    """
    ys = np.arange(rows, dtype=np.float32)[:, None]
    xs = np.arange(columns, dtype=np.float32)[None, :]
    apex_x, apex_y, depth = columns / 2.0, rows * 0.06, rows * 0.9
    r = np.hypot(xs - apex_x, ys - apex_y)
    theta = np.arctan2(xs - apex_x, ys - apex_y)
    sector = (r < depth) & (np.abs(theta) < np.deg2rad(40.0))
    speckle = rng.rayleigh(0.35, size=(rows, columns)).astype(np.float32)
    wall = smooth_noise(rng, (rows, columns), 10)
    colour_bar = np.linspace(255.0, 0.0, rows // 3, dtype=np.float32)
    cx, cy = apex_x, rows * 0.55
    for index in range(frames):
        phase = 0.5 + 0.5 * np.cos(2.0 * np.pi * index / max(frames, 1) * 2.0)  # two beats per loop
        cavity_rx, cavity_ry = 0.16 * columns * (0.75 + 0.25 * phase), 0.22 * rows * (0.8 + 0.2 * phase)
        ellipse = ((xs - cx) / cavity_rx) ** 2 + ((ys - cy) / cavity_ry) ** 2
        echo = 0.25 + 0.35 * wall
        echo = np.where((ellipse > 1.0) & (ellipse < 1.9), 0.85, echo)  # myocardium
        echo = np.where(ellipse <= 1.0, 0.04, echo)  # blood pool
        echo = np.where(np.abs(r - depth * 0.93) < 6.0, 1.0, echo)  # pericardium
        grey = np.where(sector, echo * speckle * (1.0 - 0.5 * r / depth), 0.0)
        grey = np.clip(grey * 255.0, 0.0, 255.0).astype(np.uint8)
        frame = np.repeat(grey[:, :, None], 3, axis=2)
        frame[rows // 3 : rows // 3 + colour_bar.size, columns - 24 : columns - 12, 0] = colour_bar[:, None]
        frame[rows // 3 : rows // 3 + colour_bar.size, columns - 24 : columns - 12, 2] = (
            255.0 - colour_bar[:, None]
        )
        yield frame
