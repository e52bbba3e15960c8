import pytest
import torch
from flow_checks import assert_all_proofs, assert_roundtrip, every_layer_flow

from common import (
    check_finite,
)


@pytest.mark.usefixtures("double")
def test_proofs_of_a_flow_of_every_layer():
    flow = every_layer_flow()
    assert_all_proofs(flow, torch.randn(2, 2, 8, 8))


@pytest.mark.usefixtures("double")
def test_logdet_is_sum_of_layer_logdets():
    flow = every_layer_flow()
    x = torch.randn(2, 2, 8, 8)
    total = torch.zeros(2)
    h = x
    for layer in flow:
        h, ld = layer(h)
        total = total + ld
    y, logdet = flow(x)
    assert torch.allclose(y, h) and torch.allclose(logdet, total)


def test_float32_round_trip_bound():
    """float32 round trip through every layer. Measured here: max abs error ~1e-6 on unit-variance
    input (2.4e-7 to 1.4e-6 over seeds 0-4); the bound 1e-5 leaves a margin without hiding a bug
    (a wrong inverse gives errors of order 1)."""
    errors = []
    for seed in range(5):
        flow = every_layer_flow(seed).float()
        x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(seed + 10))
        errors.append(assert_roundtrip(flow, x, atol=1e-5))
    print(f"float32 round-trip max abs error over 5 seeds: {max(errors):.3g}")


def test_nan_input_names_the_layer_in_checking_mode():
    flow = every_layer_flow().float()
    x = torch.randn(1, 2, 8, 8)
    x[0, 1, 2, 3] = float("nan")
    flow(x)  # off by default: NaN propagates, no error
    msg = r"ActNorm: input of shape \(1, 2, 8, 8\)"
    with check_finite(), pytest.raises(ValueError, match=msg):
        flow(x)
    flow[0].bias.data[0] = float("inf")  # now the second layer sees the non-finite value
    with check_finite(), pytest.raises(ValueError, match=r"InvConv1x1: input .* NaN or inf"):
        flow(torch.randn(1, 2, 8, 8))
