"""DenseBlock execution paths and the training optimiser (issue 7 speed work).

The ``fast`` dense block grows its concatenation one output at a time (``cat((feats, x_k))``)
instead of concatenating all pieces afresh for every convolution. It must compute exactly the
authors' function: the same outputs and, in float32 with channels-last, bit-identical gradients
(the backward pass performs the same additions in the same order, only in fewer, larger blocks).
"""

from __future__ import annotations

import copy

import pytest
import torch
from flow_checks import perturb_

import train_irn
from common.subnets import DenseBlock
from irn import training as irn_training


def _outputs_and_grads(block, x, go, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = block(x)
    grads = torch.autograd.grad(y, [x, *block.parameters()], go.to(y.dtype))
    return y.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cin, cout", [(3, 9), (9, 3)])
def test_fast_path_equals_plain_path_bitwise(dtype, cin, cout):
    torch.manual_seed(0)
    block = perturb_(DenseBlock(cin, cout, gc=8), std=0.1).to(dtype)
    # a channel slice, as the coupling passes it
    x = torch.randn(2, cin + 3, 10, 12, dtype=dtype, requires_grad=True)[:, 3:]
    go = torch.randn(2, cout, 10, 12, dtype=dtype)
    results = []
    for fast in (False, True):
        block.fast = fast
        results.append(_outputs_and_grads(block, x, go))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1)
    for a, b in zip(g0, g1, strict=True):
        assert torch.equal(a, b)


def test_fast_path_under_bf16_autocast_is_the_plain_block_in_bf16():
    """Under autocast the fast block computes exactly what the plain block computes on bf16
    weights and a bf16 input (one cast of the input, bf16 concatenations), gradients included;
    its output is bf16 NCHW, its gradients have the float32 parameters' dtype."""
    torch.manual_seed(0)
    block = perturb_(DenseBlock(3, 9, gc=8), std=0.1)
    reference = copy.deepcopy(block).to(torch.bfloat16)
    reference.fast = False
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    go = torch.randn(2, 9, 8, 8)
    y, grads = _outputs_and_grads(block, x, go, autocast=True)
    x16 = x.detach().to(torch.bfloat16).requires_grad_()
    y_ref, grads_ref = _outputs_and_grads(reference, x16, go)
    assert y.dtype == torch.bfloat16 and y.is_contiguous()
    assert torch.equal(y, y_ref)
    for g, g_ref, p in zip(grads, grads_ref, [x, *block.parameters()], strict=True):
        assert g.dtype == p.dtype == torch.float32
        assert torch.equal(g, g_ref.float())


@pytest.mark.usefixtures("double")
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_gradcheck(channels_last):
    torch.manual_seed(0)
    block = perturb_(DenseBlock(2, 3, gc=3, channels_last=channels_last), std=0.3)
    x = torch.randn(1, 2, 4, 5, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-6)


def test_build_optimizer_is_fused_adam_with_the_authors_update():
    torch.manual_seed(0)
    cfg = train_irn.IRNTrainConfig(lr=1e-2)
    models = [torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)]
    models[1].load_state_dict(models[0].state_dict())
    fused = irn_training.build_optimizer(models[0], cfg)
    plain = torch.optim.Adam(
        models[1].parameters(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
    )
    assert fused.param_groups[0]["fused"]
    x = torch.randn(2, 3, 6, 6)
    for _ in range(5):
        for model, opt in zip(models, (fused, plain), strict=True):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
