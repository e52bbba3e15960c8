import pytest
import torch
from flow_checks import assert_all_proofs, perturb_

from common import ActNorm, check_finite

pytestmark = pytest.mark.usefixtures("double")


def _initialised(channels: int, x: torch.Tensor) -> ActNorm:
    layer = ActNorm(channels)
    layer(x)  # data-dependent init in training mode
    return perturb_(layer)


@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (3, 5)])
def test_proofs(shape):
    x = torch.randn(shape) * 3 + 1
    assert_all_proofs(_initialised(shape[1], x), x)


def test_data_dependent_init_normalises_first_batch():
    x = torch.randn(8, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    layer = ActNorm(3)
    y, logdet = layer(x)
    per_channel = y.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-10)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-10)
    std = x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False)
    assert torch.allclose(logdet, (-std.log().sum() * 25).expand(8))
    assert bool(layer.initialized)


def test_second_batch_does_not_reinitialise():
    layer = ActNorm(2)
    layer(torch.randn(4, 2, 3, 3))
    bias = layer.bias.detach().clone()
    layer(torch.randn(4, 2, 3, 3) * 10 + 5)
    assert torch.equal(layer.bias, bias)


def test_loaded_checkpoint_never_reinitialises():
    trained = ActNorm(3)
    trained(torch.randn(4, 3, 2, 2) * 2)
    state = trained.state_dict()
    assert "initialized" in state
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    fresh.train()
    fresh(torch.randn(4, 3, 2, 2) * 100)
    assert torch.equal(fresh.log_scale, trained.log_scale)
    assert torch.equal(fresh.bias, trained.bias)


def test_eval_mode_does_not_initialise():
    layer = ActNorm(2).eval()
    x = torch.randn(2, 2, 3, 3)
    y, _ = layer(x)
    assert torch.equal(y, x) and not bool(layer.initialized)


def test_constant_channel_gives_finite_unit_scale():
    x = torch.randn(4, 3, 4, 4)
    x[:, 1] = 0.7
    layer = ActNorm(3)
    y, logdet = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert layer.log_scale[1].item() == 0.0
    assert torch.allclose(y[:, 1], torch.zeros_like(y[:, 1]))


def test_wrong_channels_and_nan_are_clear_errors():
    layer = ActNorm(3)
    with pytest.raises(ValueError, match=r"ActNorm: expected 3 channels .* \(2, 4, 4, 4\)"):
        layer(torch.randn(2, 4, 4, 4))
    bad = torch.randn(2, 3, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with check_finite(), pytest.raises(ValueError, match=r"ActNorm: .*NaN"):
        layer(bad)
