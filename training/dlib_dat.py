"""Read dlib's serialised face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

The file is ``dlib::serialize(anet_type)`` of dlib's ``dnn_face_recognition_ex.cpp``. It is
read here byte by byte with numpy only: no dlib, no torch. Licence: the weights are dlib's
(Davis King), released into the public domain / CC0 1.0 (``face_recognition_models`` 0.3.0
ships them with its CC0 ``LICENSE``).

Format (what this module relies on and checks):

* integers: one control byte (low nibble = number of bytes that follow, 1-8; bit 7 = sign)
  then the magnitude little-endian; ``0`` is ``01 00``;
* scalars ``float``/``double``: dlib's ``float_details``: an integer mantissa (int64) and an
  integer exponent (int16) in that encoding, value ``mantissa * 2**exponent`` (exponents
  32000/32001/32002 are +inf/-inf/NaN);
* ``bool``: one ASCII byte ``'1'`` or ``'0'``; ``std::string``: an integer length, bytes;
* tensor: version ``2``, then ``num_samples, k, nr, nc`` (integers), then that many
  little-endian IEEE float32 values (row-major N, K, R, C); ``alias_tensor`` (a shape only):
  version ``1`` and four integers;
* a network is nested: ``add_loss_layer`` writes its version, its loss details, then the
  network below it; every ``add_layer`` writes its version, the *network below it*, then its
  own details and training state (three bools and the tensors ``x_grad``,
  ``cached_output``, ``params_grad``; for the layer on the input ``grad_final`` instead); a
  ``tag`` or ``skip`` writes only its version and the network below. Tags and skips carry no
  name, so the architecture must be known to read the file (as dlib's C++ type is):
  :data:`ANET_TYPE` spells it out, outermost first.

``anet_type`` (dlib's 5-point face descriptor, input 150x150 RGB)::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    block<N,stride>   = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,stride,stride, SUB>>>>>
    ares<N>           = relu<add_prev1<block<N,1, tag1<SUB>>>>
    ares_down<N>      = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,2, tag1<SUB>>>>>>>
    alevel0 = ares_down<256>;  alevel1 = 2 x ares<256> over ares_down<256>
    alevel2 = 2 x ares<128> over ares_down<128>;  alevel3 = 3 x ares<64> over ares_down<64>
    alevel4 = 3 x ares<32>

The published file (22,466,066 bytes) stores its 29 ``affine`` layers in dlib's inference
form (``affine_``: a per-channel scale and shift, batch-norm statistics already folded in);
a file holding ``bn_con`` layers instead is refused. Its 29 convolutions are ``con_4`` (with
bias), the projection ``fc_2`` (no bias, weights ``[256, 128]`` applied as ``x @ W``), the
loss ``loss_metric_2`` (margin 0.04, distance threshold 0.6) and the input layer subtracts
``(122.782, 117.001, 104.298)`` per RGB channel and divides by 256. 117 arrays, 5,614,592
values.

Every parameter array in the file is handed out once (:class:`DatArrays`) and the reader of
the network must take each of them; every training-state tensor must be empty. Any
deviation raises :class:`ConversionError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.errors import ConversionError

Float32Array = npt.NDArray[np.float32]

INPUT_SIZE = 150
EMBEDDING_SIZE = 128

# --------------------------------------------------------------------------- the architecture


@dataclass(frozen=True)
class Spec:
    """One element of the network, as dlib nests it.

    ``kind``: ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``,
    ``fc``, ``tag`` or ``skip``. ``args``: what the C++ type fixes (filters, window, stride,
    tag id).
    """

    kind: str
    args: tuple[int, ...] = ()


def _block(n: int, stride: int) -> list[Spec]:
    """``block<N, affine, stride>`` outermost first."""
    return [
        Spec("affine"),
        Spec("con", (n, 3, 3, 1, 1)),
        Spec("relu"),
        Spec("affine"),
        Spec("con", (n, 3, 3, stride, stride)),
    ]


def _ares(n: int) -> list[Spec]:
    return [Spec("relu"), Spec("add_prev", (1,)), *_block(n, 1), Spec("tag", (1,))]


def _ares_down(n: int) -> list[Spec]:
    return [
        Spec("relu"),
        Spec("add_prev", (2,)),
        Spec("avg_pool", (2, 2, 2, 2)),
        Spec("skip", (1,)),
        Spec("tag", (2,)),
        *_block(n, 2),
        Spec("tag", (1,)),
    ]


def _anet_type() -> tuple[Spec, ...]:
    levels = [
        _ares_down(256),  # alevel0
        *[_ares(256)] * 2,
        _ares_down(256),  # alevel1
        *[_ares(128)] * 2,
        _ares_down(128),  # alevel2
        *[_ares(64)] * 3,
        _ares_down(64),  # alevel3
        *[_ares(32)] * 3,  # alevel4
    ]
    return (
        Spec("fc", (EMBEDDING_SIZE,)),
        Spec("avg_pool", (0, 0, 1, 1)),  # avg_pool_everything
        *[s for level in levels for s in level],
        Spec("max_pool", (3, 3, 2, 2)),
        Spec("relu"),
        Spec("affine"),
        Spec("con", (32, 7, 7, 2, 2)),
    )


ANET_TYPE = _anet_type()
"""The layers between the loss and the input, outermost first."""


# --------------------------------------------------------------------------- primitives


class DatStream:
    """dlib's serialisation primitives over an in-memory file."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.pos = 0

    def _bytes(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self._data):
            raise ConversionError(f"file ends inside {what} (offset {self.pos}, need {n} bytes)")
        chunk = self._data[self.pos : end]
        self.pos = end
        return chunk

    def integer(self, what: str, signed: bool = True) -> int:
        control = self._bytes(1, what)[0]
        negative = bool(control & 0x80)
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise ConversionError(f"{what}: bad integer control byte 0x{control:02x}")
        if negative and not signed:
            raise ConversionError(f"{what}: negative value for an unsigned integer")
        value = int.from_bytes(self._bytes(size, what), "little")
        return -value if negative else value

    def real(self, what: str) -> float:
        """A ``float``/``double`` in dlib's ``float_details`` form."""
        if self.pos < len(self._data) and self._data[self.pos] & 0x70:
            raise ConversionError(f"{what}: old ASCII floating-point format, not supported")
        mantissa = self.integer(f"{what} (mantissa)")
        exponent = self.integer(f"{what} (exponent)")
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in special:
            return special[exponent]
        if abs(mantissa) >= 1 << 63 or abs(exponent) >= 1 << 15:
            raise ConversionError(f"{what}: float_details out of range")
        return math.ldexp(float(mantissa), exponent)

    def boolean(self, what: str) -> bool:
        byte = bytes(self._bytes(1, what))
        if byte not in (b"0", b"1"):
            raise ConversionError(f"{what}: bool byte {byte!r} is neither '0' nor '1'")
        return byte == b"1"

    def string(self, what: str) -> str:
        size = self.integer(what, signed=False)
        if size > 256:
            raise ConversionError(f"{what}: implausible string length {size}")
        try:
            return bytes(self._bytes(size, what)).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ConversionError(f"{what}: not an ASCII string") from exc

    def version(self, what: str, allowed: tuple[int, ...]) -> int:
        version = self.integer(f"{what} version")
        if version not in allowed:
            raise ConversionError(f"{what}: version {version}, expected one of {allowed}")
        return version

    def tensor(self, what: str) -> Float32Array:
        """A ``dlib::tensor``: float32[num_samples, k, nr, nc]."""
        self.version(f"{what} tensor", (2,))
        shape = tuple(self.integer(f"{what} shape") for _ in range(4))
        if any(d < 0 for d in shape):
            raise ConversionError(f"{what}: negative tensor shape {shape}")
        count = math.prod(shape)
        raw = self._bytes(4 * count, f"{what} data")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        """A ``dlib::alias_tensor`` (a shape, no data)."""
        self.version(f"{what} alias_tensor", (1,))
        n, k, r, c = (self.integer(f"{what} shape") for _ in range(4))
        return n, k, r, c

    def at_end(self) -> bool:
        return self.pos == len(self._data)


# --------------------------------------------------------------------------- layers


@dataclass
class DatLayer:
    """One layer's details as stored: ``kind`` (from :class:`Spec`), ``version`` (dlib's
    version string), the integers/floats of its configuration and its parameter arrays."""

    kind: str
    index: int  # position from the input (0 = the first convolution)
    version: str
    config: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Float32Array] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"layer {self.index} ({self.kind})"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def _multipliers(s: DatStream, what: str, count: int = 4) -> None:
    """Learning-rate and weight-decay multipliers: training settings, read and dropped."""
    for _ in range(count):
        s.real(f"{what} multiplier")


def _read_con(s: DatStream, spec: Spec, layer: DatLayer) -> None:
    _expect(layer.version in ("con_4", "con_5", "con_6"), f"{layer.name}: {layer.version}")
    what = layer.name
    params = s.tensor(f"{what} params")
    filters_n = s.integer(f"{what} num_filters")
    nr, nc = s.integer(f"{what} nr"), s.integer(f"{what} nc")
    stride = (s.integer(f"{what} stride_y"), s.integer(f"{what} stride_x"))
    padding = (s.integer(f"{what} padding_y"), s.integer(f"{what} padding_x"))
    filters = s.alias(f"{what} filters")
    biases = s.alias(f"{what} biases")
    _multipliers(s, what)
    use_bias = s.boolean(f"{what} use_bias") if layer.version in ("con_5", "con_6") else True
    if layer.version == "con_6":
        _expect(not s.boolean(f"{what} use_relu"), f"{what}: fused relu is not supported")
    n, kh, kw, sy, sx = spec.args
    _expect(
        (filters_n, nr, nc, *stride) == (n, kh, kw, sy, sx),
        f"{what}: con<{filters_n},{nr},{nc},{stride[0]},{stride[1]}>, expected "
        f"con<{n},{kh},{kw},{sy},{sx}>",
    )
    # dlib's default padding: half the window at stride 1, none otherwise.
    expected_padding = tuple(k // 2 if st == 1 else 0 for k, st in ((kh, sy), (kw, sx)))
    _expect(padding == expected_padding, f"{what}: padding {padding}, expected {expected_padding}")
    _expect(use_bias, f"{what}: convolution without bias")
    _expect(
        filters[0] == n and filters[2:] == (kh, kw) and biases == (1, n, 1, 1),
        f"{what}: filters {filters} / biases {biases} do not fit con<{n},{kh},{kw}>",
    )
    size = math.prod(filters)
    _expect(
        params.shape == (size + n, 1, 1, 1),
        f"{what}: params {params.shape}, expected ({size + n}, 1, 1, 1) for filters {filters}",
    )
    flat = params.reshape(-1)
    layer.config.update(stride=stride[0], padding=padding[0], filters=filters)
    layer.arrays["weight"] = flat[:size].reshape(filters)
    layer.arrays["bias"] = flat[size:]


def _read_affine(s: DatStream, layer: DatLayer) -> None:
    what = layer.name
    _expect(layer.version in ("affine_", "affine_2"), f"{what}: {layer.version}")
    params = s.tensor(f"{what} params")
    gamma, beta = s.alias(f"{what} gamma"), s.alias(f"{what} beta")
    mode = s.integer(f"{what} mode")
    if layer.version == "affine_2":
        _expect(not s.boolean(f"{what} disabled"), f"{what}: disabled affine layer")
    _expect(mode == 0, f"{what}: mode {mode}, expected 0 (CONV_MODE)")
    c = gamma[1]
    _expect(gamma == beta == (1, c, 1, 1), f"{what}: gamma {gamma} / beta {beta}")
    _expect(params.shape == (2 * c, 1, 1, 1), f"{what}: params {params.shape} for {c} channels")
    flat = params.reshape(-1)
    layer.arrays["scale"], layer.arrays["shift"] = flat[:c], flat[c:]


def _read_pool(s: DatStream, spec: Spec, layer: DatLayer) -> None:
    expected = f"{layer.kind}_2"
    _expect(layer.version == expected, f"{layer.name}: {layer.version}, expected {expected}")
    window = (s.integer(f"{layer.name} nr"), s.integer(f"{layer.name} nc"))
    stride = (s.integer(f"{layer.name} stride_y"), s.integer(f"{layer.name} stride_x"))
    padding = (s.integer(f"{layer.name} padding_y"), s.integer(f"{layer.name} padding_x"))
    _expect(
        (*window, *stride) == spec.args,
        f"{layer.name}: {layer.kind}<{window},{stride}>, expected {spec.args}",
    )
    _expect(padding == (0, 0), f"{layer.name}: padding {padding}, expected (0, 0)")
    layer.config.update(window=window[0], stride=stride[0])


def _read_fc(s: DatStream, spec: Spec, layer: DatLayer) -> None:
    what = layer.name
    _expect(layer.version in ("fc_2", "fc_3"), f"{what}: {layer.version}")
    outputs = s.integer(f"{what} num_outputs", signed=False)
    inputs = s.integer(f"{what} num_inputs", signed=False)
    params = s.tensor(f"{what} params")
    weights, biases = s.alias(f"{what} weights"), s.alias(f"{what} biases")
    bias_mode = s.integer(f"{what} bias_mode")
    _multipliers(s, what)
    if layer.version == "fc_3":
        _expect(not s.boolean(f"{what} use_bias"), f"{what}: fc_no_bias with use_bias")
    _expect(outputs == spec.args[0], f"{what}: {outputs} outputs, expected {spec.args[0]}")
    _expect(bias_mode == 1, f"{what}: bias mode {bias_mode}, expected 1 (FC_NO_BIAS)")
    _expect(weights == (inputs, outputs, 1, 1), f"{what}: weights {weights}")
    _expect(params.shape == (inputs, outputs, 1, 1), f"{what}: params {params.shape}")
    _expect(biases == (0, 0, 0, 0), f"{what}: biases {biases} in an fc_no_bias layer")
    layer.arrays["weight"] = params.reshape(inputs, outputs)  # y = x @ W


def _read_details(s: DatStream, spec: Spec, layer: DatLayer) -> None:
    if spec.kind == "con":
        _read_con(s, spec, layer)
    elif spec.kind == "affine":
        _read_affine(s, layer)
    elif spec.kind == "relu":
        _expect(layer.version in ("relu_", "relu_2"), f"{layer.name}: {layer.version}")
        if layer.version == "relu_2":
            _expect(not s.boolean(f"{layer.name} disabled"), f"{layer.name}: disabled relu")
    elif spec.kind in ("max_pool", "avg_pool"):
        _read_pool(s, spec, layer)
    elif spec.kind == "add_prev":
        _expect(layer.version == "add_prev_", f"{layer.name}: {layer.version}")
        layer.config["tag"] = spec.args[0]
    elif spec.kind == "fc":
        _read_fc(s, spec, layer)
    else:
        raise ConversionError(f"internal: no reader for {spec.kind}")


def _empty_state(s: DatStream, what: str, names: tuple[str, ...]) -> None:
    """Training state after a layer's details: three flags and tensors that must be empty
    (a network saved after ``clean()``)."""
    for flag in ("setup_called", "gradient_input_is_stale", "output_disabled"):
        s.boolean(f"{what} {flag}")
    for name in names:
        tensor = s.tensor(f"{what} {name}")
        _expect(tensor.size == 0, f"{what}: training tensor {name} {tensor.shape} is not empty")


# --------------------------------------------------------------------------- the network


@dataclass
class DlibNetwork:
    """What the file holds: the input layer's channel means, the layers (input first, tags
    and skips left out) and the loss's settings."""

    channel_means: tuple[float, float, float]
    input_size: int
    layers: list[DatLayer]
    loss: dict[str, float]
    file_bytes: int

    def arrays(self) -> DatArrays:
        return DatArrays(self)


class DatArrays:
    """Every parameter array of a :class:`DlibNetwork`; each may be taken once."""

    def __init__(self, net: DlibNetwork) -> None:
        self._arrays = {
            (layer.index, key): value for layer in net.layers for key, value in layer.arrays.items()
        }
        self.total_arrays = len(self._arrays)
        self.total_values = sum(int(a.size) for a in self._arrays.values())
        self._taken: set[tuple[int, str]] = set()

    def take(self, layer: DatLayer, key: str, shape: tuple[int, ...]) -> Float32Array:
        """``layer``'s array ``key``, which must have ``shape``; marks it used."""
        ident = (layer.index, key)
        if ident in self._taken:
            raise ConversionError(f"{layer.name}: array '{key}' used twice")
        if ident not in self._arrays:
            raise ConversionError(f"{layer.name}: no array '{key}'")
        array = self._arrays[ident]
        if tuple(array.shape) != tuple(shape):
            raise ConversionError(
                f"{layer.name}: array '{key}' has shape {tuple(array.shape)}, needs {shape}"
            )
        if not np.isfinite(array).all():
            raise ConversionError(f"{layer.name}: array '{key}' contains NaN or Inf")
        self._taken.add(ident)
        return array

    @property
    def used(self) -> int:
        return len(self._taken)

    def check_all_used(self) -> None:
        unused = sorted(set(self._arrays) - self._taken)
        if unused:
            shown = ", ".join(f"layer {i} {k}" for i, k in unused[:10])
            raise ConversionError(f"{len(unused)} array(s) in the file left unused: {shown}")


def parse_dlib_resnet(data: bytes) -> DlibNetwork:
    """Parse the bytes of a serialised ``anet_type`` (see the module docstring)."""
    s = DatStream(data)
    s.version("add_loss_layer", (1,))
    loss_version = s.string("loss details")
    if loss_version == "loss_metric_2":
        loss = {"margin": s.real("loss margin"), "distance_threshold": s.real("loss threshold")}
    elif loss_version == "loss_metric_":
        loss = {"margin": 0.1, "distance_threshold": 0.75}  # what dlib hard-coded then
    else:
        raise ConversionError(f"loss layer {loss_version!r}, expected loss_metric_")

    # Outermost first, every wrapper writes its version before the network below it.
    versions = []
    for depth, spec in enumerate(ANET_TYPE[:-1]):
        allowed = (1,) if spec.kind in ("tag", "skip") else (1, 2)
        versions.append(s.version(f"{spec.kind} wrapper at depth {depth}", allowed))

    # The add_layer directly on the input: its own version, the input layer, its details.
    input_version = s.version("input add_layer", (2, 3))
    name = s.string("input layer")
    if name != "input_rgb_image_sized":
        raise ConversionError(f"input layer {name!r}, expected input_rgb_image_sized")
    means = tuple(s.real(f"input avg_{c}") for c in ("red", "green", "blue"))
    size = (s.integer("input nr", signed=False), s.integer("input nc", signed=False))
    _expect(size == (INPUT_SIZE, INPUT_SIZE), f"input size {size}, expected 150x150")
    innermost = ANET_TYPE[-1]
    layers: list[DatLayer] = []
    first = DatLayer(innermost.kind, 0, s.string("layer 0 details"))
    _read_details(s, innermost, first)
    _empty_state(s, first.name, ("x_grad", "cached_output", "grad_final"))
    if input_version == 3:
        s.integer("input sample_expansion_factor", signed=False)
    layers.append(first)

    # Then, innermost first, each wrapper's own part.
    for spec, version in reversed(list(zip(ANET_TYPE[:-1], versions, strict=True))):
        if spec.kind in ("tag", "skip"):
            continue
        layer = DatLayer(spec.kind, len(layers), s.string(f"layer {len(layers)} details"))
        _read_details(s, spec, layer)
        state = ("x_grad", "cached_output", "params_grad")
        _empty_state(s, layer.name, state if version == 2 else state[:2])
        layers.append(layer)
    if not s.at_end():
        raise ConversionError(f"{len(data) - s.pos} unread bytes after the network")
    c_means = (float(means[0]), float(means[1]), float(means[2]))
    return DlibNetwork(c_means, INPUT_SIZE, layers, loss, len(data))


def read_dlib_resnet(path: Path) -> DlibNetwork:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat``."""
    data = Path(path).read_bytes()  # FileNotFoundError if absent
    return parse_dlib_resnet(data)


def iter_layers(net: DlibNetwork, kind: str) -> Iterator[DatLayer]:
    return (layer for layer in net.layers if layer.kind == kind)
