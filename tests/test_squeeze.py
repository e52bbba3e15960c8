import pytest
import torch
from flow_checks import assert_all_proofs

from common import Squeeze

pytestmark = pytest.mark.usefixtures("double")


def test_proofs():
    assert_all_proofs(Squeeze(), torch.randn(2, 2, 4, 6))


def test_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, logdet = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    # channel 2*i + j holds pixel (i, j) of each 2x2 block
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert y[0, 1, 1, 1].item() == 15.0 - 4.0
    assert logdet.tolist() == [0.0]


def test_odd_size_is_a_clear_error():
    msg = r"Squeeze: height and width must be even.*\(1, 1, 3, 4\)"
    with pytest.raises(ValueError, match=msg):
        Squeeze()(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"Squeeze.inverse"):
        Squeeze().inverse(torch.randn(1, 3, 2, 2))
