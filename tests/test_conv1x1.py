import math

import pytest
import torch
from flow_checks import assert_all_proofs, perturb_

from common import InvConv1x1

pytestmark = pytest.mark.usefixtures("double")


@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (3, 6)])
def test_proofs(lu, shape):
    torch.manual_seed(0)
    layer = perturb_(InvConv1x1(shape[1], lu=lu), std=0.2)
    assert_all_proofs(layer, torch.randn(shape))


@pytest.mark.parametrize("lu", [True, False])
def test_init_is_a_rotation(lu):
    layer = InvConv1x1(5, lu=lu)
    w = layer.weight_matrix(torch.float64)
    assert torch.allclose(w @ w.T, torch.eye(5), atol=1e-6)
    assert torch.linalg.det(w).item() == pytest.approx(1.0, abs=1e-6)
    _, logdet = layer(torch.randn(2, 5, 3, 3))
    assert torch.allclose(logdet, torch.zeros(2), atol=1e-5)


def test_lu_logdet_matches_slogdet_of_assembled_matrix():
    layer = perturb_(InvConv1x1(4, lu=True), std=0.3)
    _, logdet = layer(torch.randn(2, 4, 3, 5))
    expected = torch.linalg.slogdet(layer.weight_matrix(torch.float64))[1] * 15
    assert torch.allclose(logdet, expected.expand(2))
    assert not math.isclose(expected.item(), 0.0, abs_tol=1e-3)


def test_lu_buffers_in_state_dict():
    keys = InvConv1x1(3, lu=True).state_dict().keys()
    assert {"perm", "sign_s", "lower", "upper", "log_s"} <= set(keys)


def test_wrong_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"InvConv1x1.inverse: expected 4 channels"):
        InvConv1x1(4).inverse(torch.randn(1, 3, 2, 2))
