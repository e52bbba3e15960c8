"""Memory-saving backprop (common/memsave.py): the same gradients, memory independent of depth.

Gradients are compared with the ordinary backward pass on every parameter and on the input:
float64 max relative difference < 1e-8 (measured 2-3e-15); float32 < 1e-4 (measured 1.5-2.5e-6
over 4 seeds of the IRN training step, from the round-off of reconstructing each layer's input);
bf16 autocast < 5e-2 (measured 3e-8 to 1e-2 over 4 seeds).
"""

from __future__ import annotations

import pytest
import torch
from flow_checks import every_layer_flow, perturb_
from tests_support import tiny_images

import train_irn
from common import (
    EnhancedAffineCoupling,
    FlowSequential,
    HaarDownsampling,
    dense_block,
)
from common.memsave import flow_forward, reversible_step
from irn.model import IRN, IRNConfig


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|a|`` over a list of tensors."""
    return max(
        ((u - v).abs().max() / u.abs().max().clamp_min(1e-30)).item()
        for u, v in zip(a, b, strict=True)
    )


def flow_grads(flow: FlowSequential, inp: torch.Tensor, direction: str, saving: bool):
    """Output, log-det and the gradients of a loss using both, w.r.t. input and parameters."""
    flow.memory_saving = saving
    inp = inp.detach().clone().requires_grad_(True)
    out, logdet = flow(inp) if direction == "forward" else flow.inverse(inp)
    loss = 0.3 * (out**2).sum() + out.sin().sum() + 0.1 * (logdet**2).sum()
    params = list(flow.parameters())
    grads = torch.autograd.grad(loss, [inp, *params])
    return out.detach(), logdet.detach(), list(grads)


@pytest.mark.usefixtures("double")
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_float64_gradients_equal_the_ordinary_ones(direction):
    flow = every_layer_flow(clamped_coupling=True)
    inp = torch.randn(3, 2, 8, 8) if direction == "forward" else torch.randn(3, 32, 2, 2)
    out0, ld0, g0 = flow_grads(flow, inp, direction, saving=False)
    out1, ld1, g1 = flow_grads(flow, inp, direction, saving=True)
    assert torch.equal(out0, out1) and torch.equal(ld0, ld1)  # same computation forwards
    err = max_rel(g0, g1)
    print(f"{direction}: max relative gradient difference {err:.2e}")
    assert err < 1e-8


def test_fast_paths_are_used_for_couplings():
    from common.memsave import _enhanced_forward_step, _generic_forward_step

    coupling = EnhancedAffineCoupling(8, 2, dense_block(gc=4))
    assert reversible_step(coupling, "forward") is _enhanced_forward_step
    assert reversible_step(HaarDownsampling(2), "forward") is _generic_forward_step


def irn_step_grads(dtype: torch.dtype, saving: bool, amp: bool = False, seed: int = 0):
    """The real training objective (train_irn.compute_losses) and its gradients."""
    torch.manual_seed(seed)
    model = perturb_(IRN(IRNConfig(scale=4, blocks_per_level=2, gc=8)), 0.05, seed).to(dtype)
    model.memory_saving = saving
    gen = torch.Generator().manual_seed(seed + 1)
    hr = torch.rand(2, 3, 16, 16, generator=gen, dtype=dtype).requires_grad_(True)
    lr = torch.rand(2, 3, 4, 4, generator=gen, dtype=dtype)
    cfg = train_irn.IRNTrainConfig()
    z_gen = torch.Generator().manual_seed(seed + 2)
    noise = train_irn.sample_noise(model, hr, cfg, z_gen)
    losses = train_irn.compute_losses(model, hr, lr, cfg, noise, 16.0, amp=amp)
    params = list(model.parameters())
    grads = torch.autograd.grad(losses["total"], [hr, *params])
    return losses["total"].detach(), list(grads)


def test_irn_training_step_float64_and_float32():
    """Forward pass, STE quantisation, inverse pass with sampled z: both passes memory-saving."""
    loss0, g0 = irn_step_grads(torch.float64, saving=False)
    loss1, g1 = irn_step_grads(torch.float64, saving=True)
    assert torch.equal(loss0, loss1)
    err64 = max_rel(g0, g1)
    loss0, g0 = irn_step_grads(torch.float32, saving=False)
    loss1, g1 = irn_step_grads(torch.float32, saving=True)
    assert torch.equal(loss0, loss1)
    err32 = max_rel(g0, g1)
    print(f"IRN step: max relative gradient difference float64 {err64:.2e}, float32 {err32:.2e}")
    assert err64 < 1e-8
    assert err32 < 1e-4


def test_bf16_autocast_gradients_close():
    """Under bf16 autocast the subnets see inputs rebuilt to float32 round-off, which can flip a
    bf16 rounding: gradients agree to about bf16 precision (measured 3e-8 to 1e-2 relative)."""
    _, g0 = irn_step_grads(torch.float32, saving=False, amp=True)
    _, g1 = irn_step_grads(torch.float32, saving=True, amp=True)
    err = max_rel(g0, g1)
    print(f"bf16 autocast: max relative gradient difference {err:.2e}")
    assert err < 5e-2


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps after the forward pass of ``model(x)`` for its backward pass
    (activation memory; the recomputation inside the memory-saving backward holds one layer's
    graph at a time and is not counted)."""
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = model(x)
    y.sum().backward()
    return total


def test_activation_memory_does_not_grow_with_depth():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    ordinary, saving = {}, {}
    for blocks in (1, 4):
        torch.manual_seed(0)
        model = IRN(IRNConfig(scale=2, blocks_per_level=blocks, gc=4))
        ordinary[blocks] = saved_bytes(model, x)
        model.memory_saving = True
        saving[blocks] = saved_bytes(model, x)
    print(f"saved bytes, ordinary {ordinary}, memory-saving {saving}")
    assert ordinary[4] > 3 * ordinary[1]  # grows with the number of couplings
    assert saving[4] == saving[1]  # only the flow's output is kept
    assert saving[1] <= x.numel() * 4 * 2


def test_mode_is_not_part_of_the_state_and_no_grad_is_ordinary():
    model = IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4), memory_saving=True)
    assert model.memory_saving and model.operations.memory_saving
    plain = IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4))
    assert list(model.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        y, _ = model(torch.rand(1, 3, 8, 8))
    assert y.grad_fn is None
    model.memory_saving = False
    assert not model.operations.memory_saving
    with pytest.raises(ValueError, match="no layers"):
        flow_forward([], torch.zeros(1, 2))


def test_train_flag_memory_saving_trains_identically(tmp_path):
    """``--memory-saving`` switches the mode on and gives the same loss sequence (float32)."""
    train_dir, _ = tiny_images(tmp_path)
    argv = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16"]
    argv += ["--data", str(train_dir), "--iters", "3", "--val-every", "100", "--no-tensorboard"]
    plain = train_irn.main([*argv, "--out", str(tmp_path / "plain")])
    saving = train_irn.main([*argv, "--out", str(tmp_path / "saving"), "--memory-saving"])
    assert saving["model"].memory_saving and not plain["model"].memory_saving
    for a, b in zip(plain["history"], saving["history"], strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
