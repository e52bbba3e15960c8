"""The shared invertible core: hand-written layers with forward, inverse and log-determinant.

Protocol for every layer (docs/method.md sec. 1): ``y, logdet = layer(x)`` and
``x, logdet_inv = layer.inverse(y)``, with ``logdet`` of shape ``[B]`` (float32 or wider) and
``logdet_inv = -logdet``.
"""

from common.actnorm import ActNorm
from common.conv1x1 import InvConv1x1
from common.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    CouplingBase,
    EnhancedAffineCoupling,
    SubnetConstructor,
    soft_clamp,
)
from common.downsampling import ConvDownsampling, dct_basis
from common.haar import HaarDownsampling, haar_kernel
from common.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    jpeg_roundtrip,
    list_images,
    load_image,
    load_image_tensor,
    save_image,
)
from common.metrics import image_metrics, modcrop, psnr, quantize_to_uint8, rgb_to_y, ssim
from common.quantize import quantize_ste
from common.sequential import FlowSequential
from common.squeeze import Squeeze
from common.subnets import DenseBlock, conv_subnet, dense_block, mlp_subnet
from common.utils import check_finite, sum_except_batch

__all__ = [
    "ActNorm",
    "InvConv1x1",
    "AffineCoupling",
    "AdditiveCoupling",
    "CouplingBase",
    "EnhancedAffineCoupling",
    "SubnetConstructor",
    "soft_clamp",
    "HaarDownsampling",
    "haar_kernel",
    "ConvDownsampling",
    "dct_basis",
    "quantize_ste",
    "image_metrics",
    "modcrop",
    "psnr",
    "ssim",
    "rgb_to_y",
    "quantize_to_uint8",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "jpeg_roundtrip",
    "list_images",
    "load_image",
    "load_image_tensor",
    "save_image",
    "FlowSequential",
    "Squeeze",
    "DenseBlock",
    "dense_block",
    "conv_subnet",
    "mlp_subnet",
    "check_finite",
    "sum_except_batch",
]
