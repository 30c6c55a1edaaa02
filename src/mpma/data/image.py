"""Image reading and preprocessing.

:func:`load_image` decodes JPEG, PNG (8- and 16-bit), other PIL formats and DICOM into a uint8
array, :func:`image_to_array` does the same for any image input (path, PIL image, array, tensor);
:func:`to_tensor` and :class:`ImageTransform` turn such an array into a normalised
``(3, size, size)`` float tensor. A file declaring more than 64 megapixels (:func:`max_image_pixels`,
``MPMA_MAX_IMAGE_PIXELS``) is refused from its header, before decoding. Reading uses numpy, PIL and
(lazily imported) pydicom only; torch is imported inside the tensor functions.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128

# Largest image (width x height, per frame) that load_image decodes: a 64-megapixel RGB image takes
# 192 MB once decoded. The size is read from the header first, so a decompression bomb (a small file
# declaring a huge image) is refused before any pixel is decoded. MPMA_MAX_IMAGE_PIXELS overrides it.
MAX_IMAGE_PIXELS = 64_000_000
MAX_PIXELS_ENV = "MPMA_MAX_IMAGE_PIXELS"


class ImageError(ValueError):
    """An image file is missing, empty or cannot be decoded (message names the file)."""


class ImageTooLargeError(ImageError):
    """An image declares more pixels than the limit (:func:`max_image_pixels`); nothing was decoded."""


def max_image_pixels() -> int:
    """The pixel limit of :func:`load_image`: ``$MPMA_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: the variable is not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels such as 100000000")
    return value


def _check_pixels(path: Path, width: int, height: int, limit: int, frames: int = 1) -> None:
    """Refuse a declared ``width x height`` above ``limit`` pixels, before decoding."""
    if width * height > limit:
        more = f" x {frames} frames" if frames > 1 else ""
        raise ImageTooLargeError(
            f"{path}: image too large: it declares {width} x {height} pixels{more} "
            f"({width * height / 1e6:.1f} megapixels per frame), above the limit of {limit / 1e6:g} megapixels; "
            f"nothing was decoded (a decompression bomb?). Raise the limit with {MAX_PIXELS_ENV}=N if the "
            "image is genuine")


def minmax_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linearly map the actual value range of ``array`` to 0..255 (a constant image → 0)."""
    values = array.astype(np.float64)
    lo, hi = float(np.min(values)), float(np.max(values))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _first_value(value: Any) -> float:
    """First element of a possibly multi-valued DICOM number (e.g. several windows)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0]
    return float(value)


def _window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI windowing (PS3.3 C.11.2.1.2.1) of ``values`` to 0..255."""
    if width <= 1.0:
        return np.where(values > center - 0.5, 255, 0).astype(np.uint8)
    scaled = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _load_dicom(path: Path, has_magic: bool, limit: int) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImageError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from exc
    try:
        ds = pydicom.dcmread(str(path), force=not has_magic)
    except Exception as exc:
        raise ImageError(f"{path}: cannot decode DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageError(f"{path}: DICOM file has no pixel data (not an image object?)")
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    _check_pixels(path, int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0), limit, frames)
    try:
        if frames > 1:  # multi-frame: decode the first frame only
            from pydicom.pixels import pixel_array

            pixels = np.asarray(pixel_array(ds, index=0))
        else:
            pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise ImageError(
            f"{path}: cannot decode DICOM pixel data ({exc}); compressed transfer syntaxes may "
            "need an extra decoder such as pylibjpeg or python-gdcm"
        ) from exc
    if pixels.size == 0:
        raise ImageError(f"{path}: DICOM image has zero size {pixels.shape}")
    if samples == 3:
        return pixels if pixels.dtype == np.uint8 else minmax_to_uint8(pixels)
    values = pixels.astype(np.float64)
    slope = _first_value(ds.RescaleSlope) if "RescaleSlope" in ds else 1.0
    intercept = _first_value(ds.RescaleIntercept) if "RescaleIntercept" in ds else 0.0
    values = values * slope + intercept
    center = ds.get("WindowCenter")
    width = ds.get("WindowWidth")
    if center is not None and width is not None and _first_value(width) > 0:
        out = _window_to_uint8(values, _first_value(center), _first_value(width))
    else:
        out = minmax_to_uint8(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _load_pil(path: Path, limit: int) -> np.ndarray:
    try:
        with Image.open(path) as opened:  # reads the header only
            opened.seek(0)  # multi-frame formats: first frame
            _check_pixels(path, opened.width, opened.height, limit)
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit (2 x Image.MAX_IMAGE_PIXELS), checked on open
        raise ImageTooLargeError(f"{path}: image too large ({exc}); nothing was decoded") from None
    except Exception as exc:
        raise ImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{path}: image has zero size {image.size}")
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grayscale
        return minmax_to_uint8(np.asarray(image))
    if mode in ("1", "LA"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode == "P" and "transparency" not in image.info:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    # RGBA, P with transparency, CMYK, YCbCr, LAB, ...: alpha is dropped.
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read an image file into a uint8 array.

    The declared size is read from the header first: an image of more than ``max_pixels`` pixels
    (default :func:`max_image_pixels`, 64 megapixels or ``$MPMA_MAX_IMAGE_PIXELS``) is refused with an
    :class:`ImageTooLargeError` before any pixel is decoded, so a small file that declares a huge
    image (a decompression bomb) costs no memory.

    DICOM is recognised by the ``DICM`` magic at byte 128 or a ``.dcm`` extension; it is read
    with pydicom: RescaleSlope/Intercept are applied, then the first WindowCenter/WindowWidth
    (linear VOI window) when present, else the actual min–max range is mapped to 0..255;
    MONOCHROME1 is inverted; a multi-frame file gives its first frame. Anything else is read
    with PIL (EXIF orientation applied, first frame only): 16-bit/32-bit grayscale is mapped
    from its actual min–max range to 0..255, palette/CMYK/alpha images become RGB (alpha dropped).

    Args:
        path: Image file.
        max_pixels: Largest width x height (per frame) decoded; None: :func:`max_image_pixels`.

    Returns:
        ``(H, W)`` uint8 for grayscale or ``(H, W, 3)`` uint8 for colour.

    Raises:
        ImageError: The file is missing, empty, has a zero-size image or cannot be decoded;
            the message names the file and the reason. :class:`ImageTooLargeError` (a subclass):
            the image declares more than ``max_pixels`` pixels (the message gives the size and limit).
    """
    path = Path(path)
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if not path.exists():
        raise ImageError(f"{path}: image file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image file ({exc})") from exc
    if size == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    has_magic = head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC
    if has_magic or path.suffix.lower() == ".dcm":
        array = _load_dicom(path, has_magic, limit)
    else:
        array = _load_pil(path, limit)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ImageError(f"{path}: unsupported image shape {array.shape}")
    return np.ascontiguousarray(array)


def image_to_array(image: Any) -> np.ndarray:
    """Any supported image input -> ``(H, W)`` or ``(H, W, 3|4)`` uint8 array.

    Accepted: a path (read with :func:`load_image`), a PIL image, a numpy array or a torch tensor
    shaped ``(H, W)``, ``(H, W, 1|3|4)`` or ``(1|3, H, W)``. uint8 is kept, bool becomes 0/255,
    floats in [0, 1] are scaled by 255, any other range is mapped min-max to 0..255
    (:func:`minmax_to_uint8`).

    Raises:
        ImageError: a path that is missing or cannot be decoded (the message names it).
        TypeError / ValueError: an unsupported object or array shape.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            return minmax_to_uint8(np.asarray(image))
        return np.asarray(image.convert("L" if image.mode in ("L", "1", "LA") else "RGB"), dtype=np.uint8).copy()
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported; never import it here
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"unsupported image type {type(image).__name__}: pass a path, a PIL image or a numpy array")
    array = image
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(f"unsupported image array shape {image.shape}: expected (H, W), (H, W, 3|4) or (3, H, W)")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating) and np.nanmin(array) >= 0.0 and np.nanmax(array) <= 1.0:
        return np.round(np.nan_to_num(array) * 255.0).astype(np.uint8)
    return minmax_to_uint8(array)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 → ``(H, W, 3)`` uint8."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"expected a uint8 numpy array, got {kind}; use load_image() first")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has zero size {image.shape}")
    return image


def to_tensor(
    image: np.ndarray,
    size: int,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> torch.Tensor:
    """Resize and normalise a uint8 image into a model input.

    Grayscale is repeated to 3 channels, RGBA loses its alpha, the image is resized to
    ``size × size`` with PIL bicubic (aspect ratio is not kept), scaled to [0, 1] and normalised
    per channel with ``(x - mean) / std``.

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 array.
        size: Output side length in pixels.
        mean: Per-channel mean (RGB).
        std: Per-channel standard deviation (RGB).

    Returns:
        ``(3, size, size)`` float32 tensor.
    """
    import torch

    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values with std > 0, got {mean} / {std}")
    rgb = _as_rgb(image)
    if rgb.shape[:2] != (size, size):
        resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC)
        rgb = np.asarray(resized, dtype=np.uint8)
    if not (rgb.flags.writeable and rgb.flags.c_contiguous):
        rgb = np.array(rgb, dtype=np.uint8, order="C")  # torch needs a writable array
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32)
    tensor = tensor / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


@dataclass
class ImageTransform:
    """Preprocessing for training or evaluation.

    Evaluation (``train=False``) is :func:`to_tensor`. Training first takes a random resized
    crop (area fraction in ``crop_scale``, aspect ratio log-uniform in ``crop_ratio``,
    torchvision's algorithm with a centre-crop fallback) and flips horizontally with
    probability ``hflip_prob``. The flip is off by default because it swaps left and right,
    which changes the meaning of a radiograph and of its report.

    Attributes:
        size: Output side length.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        train: Whether to apply random augmentation.
        crop_scale: Range of the crop's area as a fraction of the image area.
        crop_ratio: Range of the crop's width/height ratio.
        hflip_prob: Probability of a horizontal flip in training.
    """

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    train: bool = False
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"ImageTransform.size must be positive, got {self.size}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"ImageTransform.crop_scale must satisfy 0 < lo <= hi <= 1, "
                             f"got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"ImageTransform.crop_ratio must satisfy 0 < lo <= hi, "
                             f"got {self.crop_ratio}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"ImageTransform.hflip_prob must be in [0, 1], got {self.hflip_prob}")

    def _crop_box(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """Random resized crop box ``(top, left, h, w)``."""
        area = height * width
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.crop_scale[0], self.crop_scale[1])
            ratio = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height  # fallback: centre crop clamped to the ratio range
        if in_ratio < self.crop_ratio[0]:
            w, h = width, int(round(width / self.crop_ratio[0]))
        elif in_ratio > self.crop_ratio[1]:
            h, w = height, int(round(height * self.crop_ratio[1]))
        else:
            h, w = height, width
        h, w = max(1, min(h, height)), max(1, min(w, width))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Transform one image.

        Args:
            image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 array.
            rng: Source of randomness in training; pass a seeded generator for reproducible
                output. ``None`` uses a fresh, unseeded generator.

        Returns:
            ``(3, size, size)`` float32 tensor.
        """
        rgb = _as_rgb(image)
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            top, left, h, w = self._crop_box(rgb.shape[0], rgb.shape[1], rng)
            rgb = rgb[top:top + h, left:left + w]
            if self.hflip_prob > 0.0 and rng.random() < self.hflip_prob:
                rgb = rgb[:, ::-1]
        return to_tensor(rgb, self.size, self.mean, self.std)
