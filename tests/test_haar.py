import math

import pytest
import torch
import torch.nn.functional as F
from flow_checks import assert_all_proofs

from common import HaarDownsampling, haar_kernel

pytestmark = pytest.mark.usefixtures("double")


def test_proofs():
    assert_all_proofs(HaarDownsampling(3), torch.randn(2, 3, 4, 6))


def test_formulas_on_one_block():
    # one 2x2 block [[p, q], [r, t]] = [[1, 2], [3, 5]]
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    y, logdet = HaarDownsampling(1)(x)
    p, q, r, t = 1.0, 2.0, 3.0, 5.0
    expected = [(p + q + r + t) / 4, (p - q + r - t) / 4, (p + q - r - t) / 4, (p - q - r + t) / 4]
    assert y.flatten().tolist() == pytest.approx(expected)
    assert logdet.item() == pytest.approx(math.log(1 / 16))


def test_low_pass_first_is_box_downscale_and_logdet_constant():
    x = torch.rand(2, 3, 8, 6)
    y, logdet = HaarDownsampling(3)(x)
    assert y.shape == (2, 12, 4, 3)
    assert torch.allclose(y[:, :3], F.avg_pool2d(x, 2))
    assert torch.allclose(logdet, torch.full((2,), -3 * 8 * 6 * math.log(2)))


def test_matches_authors_convolution_layout():
    """The authors compute conv2d(x, haar_weights, groups=C)/4, then reorder channel 4c+k to
    k*C+c. Our closed form must give exactly that ordering (checkpoint compatibility)."""
    c = 3
    x = torch.randn(2, c, 6, 4)
    out = F.conv2d(x, haar_kernel(c).to(x.dtype), stride=2, groups=c) / 4.0
    out = out.reshape(2, c, 4, 3, 2).transpose(1, 2).reshape(2, 4 * c, 3, 2)
    y, _ = HaarDownsampling(c)(x)
    assert torch.allclose(y, out, atol=1e-12)


def test_odd_size_and_wrong_channels_are_clear_errors():
    with pytest.raises(ValueError, match=r"HaarDownsampling: height and width must be even"):
        HaarDownsampling(3)(torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match=r"HaarDownsampling: expected 3 channels"):
        HaarDownsampling(3)(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"HaarDownsampling.inverse: expected 12 channels"):
        HaarDownsampling(3).inverse(torch.randn(1, 3, 2, 2))


def test_logdet_float64_not_rounded_to_float32():
    """Under the default float32 dtype a float64 input still gets the exact float64 log-det
    (it was once built as a float32 scalar first; found by the FrEIA comparison)."""
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    _, logdet = HaarDownsampling(3)(x)
    assert logdet.dtype == torch.float64
    assert logdet[0].item() == -3 * 16 * 16 * math.log(2.0)
