"""dlib's face-recognition ResNet, read from its own weights file and run with numpy.

The network is the one `face_recognition` and dlib's `face_recognition_model_v1` use
(`dlib_face_recognition_resnet_model_v1.dat`, shipped on PyPI in face_recognition_models; its architecture is
dlib's `dnn_face_recognition_ex.cpp`): a 150×150 RGB chip → 7×7/2 conv, max pool, 14 residual blocks
(32, 64, 128, 256 filters; four of them halve the size through a 2×2 average pool on the shortcut) → global
average → 128-d fully connected output. The installed dlib wheel runs it with its own convolution code
(≈75 ms a face here); the same arithmetic as im2col + one matrix product per convolution (numpy's OpenBLAS) takes
≈19 ms, and its descriptors equal dlib's to within 3e-7 on every coordinate on ../shared/faces (the tests hold it
to 1e-6 against the face_recognition library). The 150×150 chip is still cut by dlib (`get_face_chip`, the
5-point alignment with padding 0.25 that `compute_face_descriptor` uses), so only the network changes.

The weights file is dlib's serialisation: compact integers (a byte whose low nibble counts the little-endian
bytes that follow, bit 7 the sign), length-prefixed strings naming each layer's version (`con_4`, `affine_`,
`fc_2`, …), and tensors as version 2, four compact-integer dimensions and raw little-endian float32s. Layers
come input-first. Only what the forward pass needs is read; anything unexpected is an error, never a guess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

# input_rgb_image_sized<150>: (pixel − channel mean) / 256, channels R, G, B (read from the file, checked here).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
# (filters, halves the size) of each residual block, input to output: dnn_face_recognition_ex.cpp's alevel4…0.
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2
) + (((256, True),) + ((256, False),) * 2 + ((256, True),))
_LAYERS = (b"input_rgb_image_sized", b"con_4", b"affine_", b"fc_2")


class WeightsFormatError(ValueError):
    """The file is not the dlib face-recognition ResNet this module knows."""


class _Reader:
    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position

    def integer(self) -> int:
        if self.position >= len(self.data):
            raise WeightsFormatError(f"the file ends at byte {self.position}, inside a layer")
        head = self.data[self.position]
        count = head & 0x0F
        start = self.position + 1
        value = int.from_bytes(self.data[start : start + count], "little")
        self.position = start + count
        return -value if head & 0x80 else value

    def number(self) -> float:
        mantissa = self.integer()
        return mantissa * 2.0 ** self.integer()

    def text(self) -> str:
        length = self.integer()
        value = self.data[self.position : self.position + length].decode("ascii")
        self.position += length
        return value

    def tensor(self) -> np.ndarray:
        if (version := self.integer()) != 2:
            raise WeightsFormatError(f"tensor version {version} at byte {self.position}, expected 2")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        if count < 0 or self.position + 4 * count > len(self.data):
            raise WeightsFormatError(
                f"the file ends inside a tensor of shape {shape} at byte {self.position}"
            )
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.position)
        self.position += 4 * count
        return values.astype(np.float32).reshape(shape)


class _Conv:
    def __init__(self, weights: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> None:
        self.matrix = np.ascontiguousarray(weights.reshape(weights.shape[0], -1))
        self.bias = bias[:, None]
        self.size = weights.shape[2]
        self.stride = stride
        self.padding = padding

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (channels, height, width) float32 → (filters, out_h, out_w); cross-correlation like dlib's."""
        if self.padding:
            p = self.padding
            x = np.pad(x, ((0, 0), (p, p), (p, p)))
        channels, height, width = x.shape
        k, s = self.size, self.stride
        out_h, out_w = (height - k) // s + 1, (width - k) // s + 1
        sc, sh, sw = x.strides
        columns = np.lib.stride_tricks.as_strided(
            x, (channels, k, k, out_h, out_w), (sc, sh, sw, sh * s, sw * s), writeable=False
        )
        out = self.matrix @ columns.reshape(channels * k * k, out_h * out_w)
        out += self.bias
        return out.reshape(-1, out_h, out_w)


def _pool(x: np.ndarray, size: int, stride: int, reduce: str) -> np.ndarray:
    channels, height, width = x.shape
    out_h, out_w = (height - size) // stride + 1, (width - size) // stride + 1
    sc, sh, sw = x.strides
    windows = np.lib.stride_tricks.as_strided(
        x, (channels, out_h, out_w, size, size), (sc, sh * stride, sw * stride, sh, sw), writeable=False
    )
    return windows.max(axis=(3, 4)) if reduce == "max" else windows.mean(axis=(3, 4), dtype=np.float32)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's add_prev: tensors of different shapes add where they overlap (top-left); elsewhere the one
    that has a value keeps it (the other counts as zero)."""
    if a.shape == b.shape:
        return a + b
    out = np.zeros(tuple(max(i, j) for i, j in zip(a.shape, b.shape, strict=True)), dtype=np.float32)
    out[: a.shape[0], : a.shape[1], : a.shape[2]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2]] += b
    return out


_blas: ThreadpoolController | None = None


def _one_blas_thread() -> Any:
    """A context in which numpy's BLAS uses one thread: the products here are small (≤ 2304 × 5184), so more
    threads only spin — measured: 19 ms a face on one thread, 260 ms of CPU on two on a busy machine — and
    curate already runs one analysing process per core."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()  # inspects the loaded libraries once
    return _blas.limit(limits=1, user_api="blas")


class DlibResNet:
    """The 128-d descriptor network; `descriptor(chip)` for a (150, 150, 3) uint8 RGB chip → (128,) float64.

    Raises WeightsFormatError when `path` is not the expected weights file (layer count, shapes)."""

    def __init__(self, path: Path) -> None:
        data = Path(path).read_bytes()
        if not data.startswith(b"\x01\x01\x01\x0dloss_metric_2"):
            raise WeightsFormatError(f"{path} is not dlib's metric-learning network (loss_metric_2)")
        markers = sorted(
            (match.start(), name)
            for name in _LAYERS
            for match in re.finditer(re.escape(b"\x01" + bytes([len(name)]) + name), data)
        )
        convs: list[_Conv] = []
        affines: list[tuple[np.ndarray, np.ndarray]] = []
        self.mean = np.zeros(3, dtype=np.float32)
        fc: np.ndarray | None = None
        for position, name in markers:
            reader = _Reader(data, position)
            try:
                reader.text()
            except (IndexError, UnicodeDecodeError):  # IndexError: the file ends inside a number
                raise WeightsFormatError(f"{path}: unreadable layer name at byte {position}") from None
            if name == b"input_rgb_image_sized":
                self.mean = np.asarray([reader.number() for _ in range(3)], dtype=np.float32)
                if (reader.integer(), reader.integer()) != (CHIP_SIZE, CHIP_SIZE):
                    raise WeightsFormatError(f"{path}: the network's input is not {CHIP_SIZE}×{CHIP_SIZE}")
            elif name == b"con_4":
                params = reader.tensor().ravel()
                filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(7))
                if rows != cols or stride_y != stride_x or pad_y != pad_x:
                    raise WeightsFormatError(f"{path}: a convolution that is not square at byte {position}")
                inputs = (params.size - filters) // (filters * rows * cols)
                split = filters * inputs * rows * cols
                weights = params[:split].reshape(filters, inputs, rows, cols)
                convs.append(_Conv(weights, params[split:], stride_y, pad_y))
            elif name == b"affine_":
                params = reader.tensor().ravel()
                half = params.size // 2
                affines.append((params[:half, None, None], params[half:, None, None]))
            else:
                outputs, inputs = reader.integer(), reader.integer()
                fc = reader.tensor().reshape(inputs, outputs)
        expected = 1 + 2 * len(BLOCKS)
        if len(convs) != expected or len(affines) != expected or fc is None or fc.shape != (256, 128):
            raise WeightsFormatError(
                f"{path}: {len(convs)} convolutions, {len(affines)} affine layers — expected {expected} of each "
                "and a 256→128 output layer"
            )
        self._convs = convs
        self._affines = affines
        self._fc = np.ascontiguousarray(fc)

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        with _one_blas_thread():
            return self._descriptor(chip)

    def _descriptor(self, chip: np.ndarray) -> np.ndarray:
        x = ((chip.astype(np.float32) - self.mean) / np.float32(256.0)).transpose(2, 0, 1)
        x = np.ascontiguousarray(x)
        layers = iter(zip(self._convs, self._affines, strict=True))

        def conv_affine(x: np.ndarray) -> np.ndarray:
            conv, (gamma, beta) = next(layers)
            y = conv(x)
            y *= gamma
            y += beta
            return y

        x = _pool(np.maximum(conv_affine(x), 0), 3, 2, "max")
        for _filters, halves in BLOCKS:
            y = conv_affine(np.maximum(conv_affine(x), 0))
            shortcut = _pool(x, 2, 2, "mean") if halves else x
            x = np.maximum(_add(y, shortcut), 0)
        pooled = x.mean(axis=(1, 2), dtype=np.float32)
        return np.asarray(pooled @ self._fc, dtype=np.float64)
