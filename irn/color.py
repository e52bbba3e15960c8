"""IRN-Color: invertible decolourisation and colour restoration (IRN's IJCV extension).

One invertible map ``f: x_RGB -> (gray, z)`` at full resolution (Xiao et al., "Invertible
Rescaling Network and Its Extensions", IJCV 2023, arXiv:2210.04188, the decolorization-colorization
task): ``gray`` (1 channel) should look like the luminance of ``x`` and is stored as an 8-bit
image; ``z`` (2 channels) carries the colour and is pushed towards ``N(0, I)``, so the colour is
restored as ``f^-1(Quant(gray), z)`` with a freshly drawn ``z`` (or ``z = 0``). The objective is
IRN's (IRN, ECCV 2020, sec. 3.3; docs/method.md) with the luminance in place of the bicubic LR.

Usage::

    model = IRNColor(IRNColorConfig())
    y, logdet = model(rgb)                    # y[:, :1] gray (unquantised), y[:, 1:] z
    gray = model.decolorize(rgb)              # 8-bit gray, straight-through gradient
    rgb2 = model.colorize(gray)               # z ~ N(0, 1); temperature=0 gives z = 0
    losses = color_losses(model, rgb)         # {"total", "guide", "recon", "distr"}
    rows = evaluate_color(model, [img_hwc])   # per-image gray and colour PSNR/SSIM

Training and evaluation: ``python train_irn_color.py`` and
``python evaluate_color.py --checkpoint runs/irn_color/last.pt``; checkpoints are read by
``irn/checkpoints.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from common.conv1x1 import InvConv1x1
from common.coupling import EnhancedAffineCoupling
from common.metrics import image_metrics, psnr, quantize_to_uint8, ssim
from common.quantize import quantize_ste
from common.runtime import autocast_context
from common.sequential import FlowSequential
from common.subnets import dense_block
from irn.losses import LOSS_KINDS, distribution_loss, pixel_loss
from irn.model import check_coupling_fields, clamp_field, gc_field, init_field

__all__ = [
    "BT601_LUMA",
    "COLOR_LAMBDA_GUIDE",
    "RGB_TO_YUV",
    "IRNColorConfig",
    "IRNColor",
    "color_losses",
    "evaluate_color",
    "luminance_reference",
    "preview_color",
]

# ITU-R BT.601 luma weights (Kr, Kg, Kb) for RGB in [0, 1], no offset: Y in [0, 1].
BT601_LUMA = (0.299, 0.587, 0.114)
# RGB -> YUV (BT.601, analog YUV: U = 0.492 (B - Y), V = 0.877 (R - Y), rounded to 3 decimals as
# in the IRN authors' IRN-Color code). Each chroma row sums to 0, so a gray pixel R = G = B = c
# maps to (c, 0, 0); its inverse's first column is (1, 1, 1).
RGB_TO_YUV = (
    BT601_LUMA,
    (-0.147, -0.289, 0.436),
    (0.615, -0.515, -0.100),
)
# Guidance weight of the IRN authors' IRN-Color training config (``lambda_fit_forw: 3``; their
# reconstruction and distribution weights are 1, as for rescaling).
COLOR_LAMBDA_GUIDE = 3.0
# The authors' IRN-Color uses 8 enhanced couplings after the colour transform (``block_num: [8]``).
DEFAULT_COUPLINGS = 8


def luminance_reference(rgb: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The gray image IRN-Color is guided towards: BT.601 luma ``0.299 R + 0.587 G + 0.114 B``.

    RGB and the result are in [0, 1] (full range, no 16..235 offset; the same as OpenCV's
    ``COLOR_RGB2GRAY`` on float images, the IRN authors' reference gray). Not to be confused
    with :func:`common.metrics.rgb_to_y`, the offset MATLAB Y used for the Y-channel metrics.

    Args:
        rgb: torch ``[..., 3, H, W]`` (channel at -3) or numpy ``[..., H, W, 3]`` (channel last).

    Returns:
        torch ``[..., 1, H, W]`` (differentiable, the input's dtype) or numpy float64
        ``[..., H, W]``.
    """
    kr, kg, kb = BT601_LUMA
    if isinstance(rgb, torch.Tensor):
        if rgb.dim() < 3 or rgb.shape[-3] != 3:
            raise ValueError(
                f"luminance_reference: expected a torch RGB image [..., 3, H, W], got shape "
                f"{tuple(rgb.shape)}"
            )
        x = rgb if rgb.is_floating_point() else rgb.double()
        r, g, b = x.narrow(-3, 0, 1), x.narrow(-3, 1, 1), x.narrow(-3, 2, 1)
        return kr * r + kg * g + kb * b
    if isinstance(rgb, np.ndarray):
        if rgb.ndim < 3 or rgb.shape[-1] != 3:
            raise ValueError(
                f"luminance_reference: expected a numpy RGB image [..., H, W, 3], got shape "
                f"{rgb.shape}"
            )
        x = rgb.astype(np.float64, copy=False)
        return kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2]
    raise ValueError(
        f"luminance_reference: expected a torch tensor or numpy array, got {type(rgb).__name__}"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class IRNColorConfig:
    """Architecture of an :class:`IRNColor`; the defaults are the IRN authors' IRN-Color."""

    couplings: int = field(
        default=DEFAULT_COUPLINGS,
        metadata={
            "help": "Enhanced affine couplings after the 1x1 colour transform (authors' "
            "IRN-Color: 8)."
        },
    )
    clamp: float = clamp_field()
    clamp_tightness: float = field(
        default=1.0,
        metadata={"help": "Steepness t of the clamp clamp*(2*sigmoid(t*u)-1); 1 = the authors'."},
    )
    gc: int = gc_field()
    init: Literal["xavier", "kaiming"] = init_field()
    learnable_transform: bool = field(
        default=True,
        metadata={
            "help": "Learn the 1x1 colour transform (initialised to RGB->YUV, BT.601) as the "
            "authors do; false keeps it fixed at RGB->YUV."
        },
    )

    def __post_init__(self) -> None:
        if not _is_int(self.couplings) or self.couplings < 1:
            raise ValueError(
                f"IRNColorConfig: couplings must be an int >= 1, got {self.couplings!r}"
            )
        check_coupling_fields(self)
        if not isinstance(self.learnable_transform, bool):
            raise ValueError(
                "IRNColorConfig: learnable_transform must be a bool, got "
                f"{self.learnable_transform!r}"
            )


class IRNColor(nn.Module):
    """IRN-Color: ``x_RGB -> (gray, z)`` and back, at full resolution.

    Structure (IJCV 2023, arXiv:2210.04188, decolorization; the authors' ``InvGreyNet``)::

        y = (c_K o ... o c_1 o T)(x)        T: invertible 1x1 colour transform, W = RGB->YUV
                                            c_k: IRN's enhanced affine coupling (IRN sec. 3.2),
                                                 split 1 / 2 (the first channel = the gray branch)
        gray = y[:, :1],  z = y[:, 1:]      log|det df/dx| = H W log|det W| + sum_k sum(s_k)

    ``T`` is :class:`~common.conv1x1.InvConv1x1` without LU (a free 3x3 matrix, its log-det by
    float64 ``slogdet`` and its inverse in float64), initialised to :data:`RGB_TO_YUV`; the
    couplings' last convolutions are zero, so at initialisation ``f`` *is* RGB->YUV: the gray
    channel equals :func:`luminance_reference` and ``z = (U, V)``. There is no spatial
    downsampling (the authors use none): decolourisation keeps the resolution, and each coupling
    sees the full-resolution gray (1 channel) and chroma (2 channels).

    Subnets are the authors' dense blocks (:class:`~common.subnets.DenseBlock`, growth ``gc``).
    ``state_dict`` keys: ``operations.0.weight`` (the colour matrix) and
    ``operations.{k}.{F,G,H}.conv{1..5}.{weight,bias}`` for the couplings ``k = 1..K``.
    ``memory_saving`` is the execution option of :class:`~irn.model.IRN` (recompute activations
    from the outputs in the backward pass); it does not change the state_dict.

    Reference: Xiao et al., "Invertible Rescaling Network and Its Extensions", IJCV 2023,
    arXiv:2210.04188 (IRN-Color); Kingma & Dhariwal, "Glow", arXiv:1807.03039 (1x1 conv).
    """

    in_channels = 3
    gray_channels = 1
    z_channels = 2

    def __init__(self, config: IRNColorConfig | None = None, memory_saving: bool = False) -> None:
        super().__init__()
        cfg = IRNColorConfig() if config is None else config
        if not isinstance(cfg, IRNColorConfig):
            raise ValueError(
                f"IRNColor: config must be an IRNColorConfig, got {type(cfg).__name__}"
            )
        self.config = cfg
        transform = InvConv1x1(3, lu=False)
        # RGB->YUV in the default dtype (as nn.Conv2d's parameters), not InvConv1x1's float32.
        transform.weight = nn.Parameter(
            torch.tensor(RGB_TO_YUV, dtype=torch.get_default_dtype()),
            requires_grad=cfg.learnable_transform,
        )
        subnet = dense_block(gc=cfg.gc, init=cfg.init)
        couplings = [
            EnhancedAffineCoupling(
                3, 1, subnet, clamp=cfg.clamp, clamp_tightness=cfg.clamp_tightness
            )
            for _ in range(cfg.couplings)
        ]
        self.operations = FlowSequential(transform, *couplings, memory_saving=memory_saving)

    @property
    def transform(self) -> InvConv1x1:
        """The learnable 1x1 colour transform (first layer)."""
        return self.operations[0]

    @property
    def memory_saving(self) -> bool:
        return self.operations.memory_saving

    @memory_saving.setter
    def memory_saving(self, enabled: bool) -> None:
        self.operations.memory_saving = bool(enabled)

    def _check(self, x: Any, what: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"IRNColor: {what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(
                f"IRNColor: expected {what} of shape [B, 3, H, W], got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y, logdet = f(x)``: RGB ``[B, 3, H, W]`` -> ``cat(gray, z)`` ``[B, 3, H, W]``."""
        self._check(x, "the RGB input")
        return self.operations(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, logdet = f^-1(y)`` with ``y = cat(gray, z)``; ``logdet`` is that of ``f^-1``."""
        self._check(y, "y = cat(gray, z)")
        return self.operations.inverse(y)

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gray, z)``, the two parts of ``f(rgb)``; ``gray`` is **not** quantised."""
        y, _ = self(rgb)
        return y[:, :1], y[:, 1:]

    def decolorize(self, rgb: torch.Tensor) -> torch.Tensor:
        """The 8-bit gray image ``Quant(f(rgb)[:, :1])`` (straight-through gradient)."""
        gray, _ = self.encode(rgb)
        return quantize_ste(gray)

    def colorize(
        self,
        gray: torch.Tensor,
        z: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """RGB ``f^-1(cat(gray, z))`` (not clamped); ``gray`` is used as given.

        ``z`` ``[B, 2, H, W]``; when None it is drawn as ``N(0, temperature^2)`` with
        ``generator`` (``temperature = 0``: ``z = 0``). A given ``z`` with a temperature other
        than 1 is refused rather than silently ignored.
        """
        if not isinstance(gray, torch.Tensor) or gray.dim() != 4 or gray.shape[1] != 1:
            got = tuple(gray.shape) if isinstance(gray, torch.Tensor) else type(gray).__name__
            raise ValueError(f"IRNColor.colorize: expected gray of shape [B, 1, H, W], got {got}")
        z = _latent(gray, z, temperature, generator, "IRNColor.colorize")
        rgb, _ = self.inverse(torch.cat([gray, z.to(gray.dtype)], dim=1))
        return rgb


def _latent(
    gray: torch.Tensor,
    z: torch.Tensor | None,
    temperature: float,
    generator: torch.Generator | None,
    where: str,
) -> torch.Tensor:
    """``z`` for ``gray`` ``[B, 1, H, W]``: checked if given, else ``N(0, temperature^2)``."""
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"{where}: temperature must be >= 0, got {temperature!r}")
    b, _, h, w = gray.shape
    shape = (b, IRNColor.z_channels, h, w)
    if z is None:
        if temperature == 0:
            return gray.new_zeros(shape)
        noise = torch.randn(shape, generator=generator, dtype=gray.dtype, device=gray.device)
        return noise * temperature
    if temperature != 1.0:
        raise ValueError(
            f"{where}: temperature={temperature} applies only to a sampled z; scale the given z "
            "yourself"
        )
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != shape:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(
            f"{where}: z must have shape {shape} for gray {tuple(gray.shape)}, got {got}"
        )
    return z


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------------------------------------
# Training objective
# ---------------------------------------------------------------------------------------------


def color_losses(
    model: nn.Module,
    rgb: torch.Tensor,
    *,
    lambda_guide: float = COLOR_LAMBDA_GUIDE,
    lambda_recon: float = 1.0,
    lambda_distr: float = 1.0,
    guide_loss: str = "l2",
    recon_loss: str = "charbonnier",
    z: torch.Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    quantize_guide_loss: bool = False,
    quantize_recon_loss: bool = False,
    amp: bool = False,
) -> dict[str, torch.Tensor]:
    """IRN's objective for decolourisation (IRN, ECCV 2020, sec. 3.3; IJCV IRN-Color).

    ``(gray, z_f) = f(x)``;
    ``L_guide = mean_b sum rho_g(gray - luminance_reference(x))`` on the unquantised gray
    (``quantize_guide_loss``: on ``Quant(gray)``); ``gray_q = Quant(gray)`` (8-bit,
    straight-through gradient, :func:`~common.quantize.quantize_ste`);
    ``x' = f^-1(gray_q, z')`` with ``z'`` the given ``z`` or ``N(0, temperature^2)`` drawn with
    ``generator``; ``L_recon = mean_b sum rho_r(x' - x)`` on RGB (Charbonnier by default;
    ``quantize_recon_loss``: on ``Quant(x')``); ``L_distr = mean_b sum z_f^2``.
    Total ``lambda_guide L_guide + lambda_recon L_recon + lambda_distr L_distr``.

    ``model`` may be wrapped (DDP): the forward pass goes through the wrapper, the inverse
    through the module. ``amp`` runs both passes under autocast; the losses are float32.

    Returns:
        ``{"total", "guide", "recon", "distr"}`` (0-dim tensors).
    """
    for name, kind in (("guide_loss", guide_loss), ("recon_loss", recon_loss)):
        if kind not in LOSS_KINDS:
            raise ValueError(f"color_losses: {name} must be one of {LOSS_KINDS}, got {kind!r}")
    if not isinstance(rgb, torch.Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3:
        got = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
        raise ValueError(f"color_losses: expected an RGB batch [B, 3, H, W], got {got}")
    device = rgb.device
    with autocast_context(device, amp):
        y, _ = model(rgb)
    gray, z_f = y[:, :1], y[:, 1:]
    gray_q = quantize_ste(gray)
    reference = luminance_reference(rgb).detach()
    l_guide = pixel_loss(gray_q if quantize_guide_loss else gray, reference, guide_loss)
    l_distr = distribution_loss(z_f)
    z_up = _latent(gray_q, z, temperature, generator, "color_losses")
    with autocast_context(device, amp):
        x_rec, _ = _unwrap(model).inverse(torch.cat([gray_q, z_up.to(gray_q.dtype)], dim=1))
    if quantize_recon_loss:
        x_rec = quantize_ste(x_rec)
    l_recon = pixel_loss(x_rec, rgb, recon_loss)
    total = lambda_guide * l_guide + lambda_recon * l_recon + lambda_distr * l_distr
    return {"total": total, "guide": l_guide, "recon": l_recon, "distr": l_distr}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

# Keys of one evaluate_color row that are metrics (the table and the means use them).
METRIC_KEYS = (
    "gray_psnr",
    "gray_ssim",
    "psnr_rgb",
    "ssim_rgb",
    "psnr_y",
    "ssim_y",
    "psnr_rgb_z0",
    "ssim_rgb_z0",
    "psnr_y_z0",
    "ssim_y_z0",
    "nocolor_psnr_rgb",
    "nocolor_ssim_rgb",
)


def _u8_hwc(t: torch.Tensor) -> np.ndarray:
    """``[1, C, H, W]`` float -> uint8 ``[H, W, C]`` (``round(clamp(v, 0, 1) * 255)``)."""
    return quantize_to_uint8(t[0].float()).permute(1, 2, 0).cpu().numpy()


def _restore(model: nn.Module, gray: torch.Tensor, z: torch.Tensor, amp: bool) -> np.ndarray:
    """Colour restored from ``gray`` ``[1, 1, H, W]`` and ``z`` as uint8 ``[H, W, 3]``."""
    with autocast_context(gray.device, amp):
        rec = model.colorize(gray, z)
    return _u8_hwc(rec)


@torch.no_grad()
def evaluate_color(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    draws: int = 5,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    return_images: bool = False,
) -> list[dict[str, Any]]:
    """Decolourise and restore each image; the metrics of both directions.

    For each RGB image ``x`` (float ``[H, W, 3]`` in [0, 1], any size >= 11x11):

    * ``gray' = Quant(f(x)[:, :1])`` as uint8 against the uint8 :func:`luminance_reference`:
      ``gray_psnr``, ``gray_ssim`` (one channel, 0..255 scale, no border crop);
    * colour restoration ``x' = f^-1(gray', z)`` to uint8, against ``x`` as uint8 (the
      evaluation's conventions, docs/method.md; no border crop): ``psnr_rgb``, ``ssim_rgb``,
      ``psnr_y``, ``ssim_y`` (Y = the
      MATLAB BT.601 Y of the evaluation) as the mean over ``draws`` samples
      ``z ~ N(0, temperature^2)`` (one draw when ``temperature == 0``), and the same with
      ``z = 0`` under ``*_z0``;
    * ``nocolor_psnr_rgb``, ``nocolor_ssim_rgb``: the reference gray copied to R, G and B (what
      colour restoration must beat).

    ``z`` is drawn per image from a generator seeded with ``seed`` (reproducible). The model is
    set to eval mode here and restored afterwards.

    Returns:
        One dict per image: the :data:`METRIC_KEYS`, ``draws``, ``draw_psnr_rgb`` (each draw's
        PSNR-RGB) and ``seconds``; with ``return_images`` also ``gray`` (uint8 ``[H, W]``),
        ``rgb_rec`` (uint8 ``[H, W, 3]``, first draw) and ``rgb_rec_z0``.
    """
    if not _is_int(draws) or draws < 1:
        raise ValueError(f"evaluate_color: draws must be an int >= 1, got {draws!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"evaluate_color: temperature must be >= 0, got {temperature!r}")
    device = torch.device(device)
    n = 1 if temperature == 0 else int(draws)
    inner = _unwrap(model)
    was_training = inner.training
    inner.eval()
    rows: list[dict[str, Any]] = []
    try:
        for index, img in enumerate(images):
            _check_image(img, index)
            start = time.perf_counter()
            row = _color_row(inner, img, n, temperature, seed, device, amp, return_images)
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
    finally:
        inner.train(was_training)
    return rows


def _check_image(img: Any, index: int) -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        got = img.shape if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(
            f"evaluate_color: image {index} must be an RGB array [H, W, 3], got {got}"
        )
    if min(img.shape[:2]) < 11:
        raise ValueError(
            f"evaluate_color: image {index} is {img.shape[1]}x{img.shape[0]}; SSIM needs "
            "at least 11x11 pixels"
        )


def _color_row(
    inner: nn.Module,
    img: np.ndarray,
    n: int,
    temperature: float,
    seed: int,
    device: torch.device,
    amp: bool,
    return_images: bool,
) -> dict[str, Any]:
    """One image's row of :func:`evaluate_color` (without ``seconds``)."""
    hr = img.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].to(device)
    with autocast_context(device, amp):
        y, _ = inner(x)
    gray_u8 = _u8_hwc(y[:, :1])[..., 0]
    ref_u8 = quantize_to_uint8(luminance_reference(hr))
    hr_u8 = quantize_to_uint8(hr.astype(np.float64))
    gray_q = torch.from_numpy(gray_u8.astype(np.float32) / 255.0)[None, None].to(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    z_shape = (1, IRNColor.z_channels, *gray_q.shape[2:])
    zero = _restore(inner, gray_q, gray_q.new_zeros(z_shape), amp)
    sampled, first = [], None
    for _ in range(n):
        if temperature == 0:
            rec = zero
        else:
            z = torch.randn(z_shape, generator=gen, device=device) * temperature
            rec = _restore(inner, gray_q, z, amp)
        first = rec if first is None else first
        sampled.append(image_metrics(hr_u8, rec))
    z0 = image_metrics(hr_u8, zero)
    gray3 = np.repeat(ref_u8[..., None], 3, axis=2)
    row: dict[str, Any] = {"gray_psnr": psnr(ref_u8, gray_u8), "gray_ssim": ssim(ref_u8, gray_u8)}
    for key in ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y"):
        row[key] = float(np.mean([m[key] for m in sampled]))
    for key in ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y"):
        row[f"{key}_z0"] = z0[key]
    row["nocolor_psnr_rgb"] = psnr(hr_u8, gray3)
    row["nocolor_ssim_rgb"] = ssim(hr_u8, gray3)
    row["draws"] = n
    row["draw_psnr_rgb"] = [m["psnr_rgb"] for m in sampled]
    if return_images:
        row["gray"] = gray_u8
        row["rgb_rec"] = np.ascontiguousarray(first)
        row["rgb_rec_z0"] = zero
    return row


@torch.no_grad()
def preview_color(
    model: nn.Module,
    rgb: np.ndarray,
    device: torch.device | str = "cpu",
    amp: bool = False,
    size: int = 192,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Images of a centred ``size`` crop for TensorBoard (HWC float32 in [0, 1]): the RGB, the
    8-bit gray' (as three equal channels), the colour restored with one ``z ~ N(0, 1)`` and
    ``|restored - RGB| x 4``."""
    h, w = rgb.shape[:2]
    side = min(h, w, size)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(rgb[top : top + side, left : left + side]).astype(np.float32)
    row = evaluate_color(
        model,
        [crop],
        draws=1,
        temperature=1.0,
        seed=seed,
        device=device,
        amp=amp,
        return_images=True,
    )[0]
    gray = np.repeat(row["gray"][..., None], 3, axis=2).astype(np.float32) / 255.0
    rec = row["rgb_rec"].astype(np.float32) / 255.0
    err = np.clip(np.abs(rec - crop) * 4.0, 0.0, 1.0)
    return {
        "1_rgb": crop,
        "2_gray": gray,
        "3_rgb_restored": rec,
        "4_abs_error_x4": err.astype(np.float32),
    }
