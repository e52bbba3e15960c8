"""Our IRN against the dissertation's FrEIA-built IRN (bench/freia_irn.py): the same function
with the same weights, the weight mapping both ways, and the behaviour differences
docs/freia.md lists, each shown here. Runs when FrEIA is installed (requirements-bench.txt,
installed by CI)."""

from __future__ import annotations

import pytest
import torch
from flow_checks import perturb_

pytest.importorskip("FrEIA")

import FrEIA.framework as Ff  # noqa: E402
import FrEIA.modules as Fm  # noqa: E402

import train_irn  # noqa: E402
from bench import compare_freia, compare_freia_irn  # noqa: E402
from bench.freia_irn import (  # noqa: E402
    FrEIAIRN,
    build_sequence_inn,
    freia_from_authors,
    freia_from_ours,
    freia_to_authors_state_dict,
    ours_from_freia,
    trainable_params,
)
from common.haar import HaarDownsampling  # noqa: E402
from irn.checkpoints import load_authors_checkpoint, to_authors_state_dict  # noqa: E402
from irn.model import IRN, IRNConfig  # noqa: E402

TINY = dict(blocks_per_level=2, gc=4)


def tiny_pair(scale: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Our tiny IRN with perturbed (non-zero) weights and the FrEIA IRN with the same weights."""
    torch.manual_seed(seed)
    ours = perturb_(IRN(IRNConfig(scale=scale, **TINY)).to(dtype), std=0.05, seed=seed)
    return ours, freia_from_ours(ours)


def hr(batch: int = 2, size: int = 16, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


# Bound on max |ours - FrEIA| relative to max(1, max |value|): float32 / float64 round-off.
# (The inverse of a random z through perturbed weights reaches |x| ~ 100 at x8, where each
# model's own float32 error against float64 is ~1e-4: the bound has to scale with it.)
TOL = {torch.float32: 2e-6, torch.float64: 1e-13}


def assert_near(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    bound = TOL[dtype] * max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= bound


@pytest.mark.parametrize(
    "scale,dtype", [(2, torch.float32), (4, torch.float32), (4, torch.float64), (8, torch.float32)]
)
def test_forward_and_inverse_equal(scale, dtype):
    ours, freia = tiny_pair(scale, dtype)
    x = hr(size=2 * scale, dtype=dtype)
    with torch.no_grad():
        y_o, ld_o = ours(x)
        y_f, ld_f = freia(x)
        assert y_f.shape == y_o.shape and ld_f.dtype == ld_o.dtype
        assert_near(y_f, y_o, dtype)
        assert_near(ld_f, ld_o, dtype)
        z = torch.randn(y_o[:, 3:].shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        y = torch.cat([y_o[:, :3], z], dim=1)
        x_o, ldi_o = ours.inverse(y)
        x_f, ldi_f = freia.inverse(y)
        assert_near(x_f, x_o, dtype)
        assert_near(ldi_f, ldi_o, dtype)
        # each is a bijection: round trip to round-off
        assert_near(freia.inverse(y_f)[0], x, dtype)
        assert_near(ours.inverse(y_o)[0], x, dtype)


def test_training_losses_and_gradients_equal():
    ours, freia = tiny_pair(4)
    x = hr()
    cfg = train_irn.IRNTrainConfig(batch_size=2, patch_size=16)
    lr_ref = torch.nn.functional.avg_pool2d(x, 4)
    noise = train_irn.sample_noise(ours, x, cfg, torch.Generator().manual_seed(3))
    results = []
    for model in (ours, freia):
        losses = train_irn.compute_losses(model, x, lr_ref, cfg, noise, 16.0)
        losses["total"].backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append((losses, grads))
    (l_o, g_o), (l_f, g_f) = results
    for key in ("total", "guide", "recon", "distr"):
        torch.testing.assert_close(l_f[key], l_o[key], rtol=1e-5, atol=0)
    assert len(g_o) == len(g_f)
    for a, b in zip(g_f, g_o, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item() + 1e-12)


def test_parameter_counts_equal_and_frozen_haar_kernels():
    ours, freia = tiny_pair(4)
    assert trainable_params(freia) == trainable_params(ours) > 0
    # FrEIA keeps each Haar kernel as a frozen parameter: [4C, 1, 2, 2] per level
    frozen = sum(p.numel() for p in freia.parameters() if not p.requires_grad)
    assert frozen == 4 * (4 * 3) + 4 * (4 * 12)
    full = IRN(IRNConfig(scale=4))
    assert trainable_params(FrEIAIRN(IRNConfig(scale=4))) == trainable_params(full) == 4_355_136


def test_mapping_both_ways_and_authors_layout():
    ours, freia = tiny_pair(4)
    back = ours_from_freia(freia)
    for (k1, v1), (k2, v2) in zip(
        ours.state_dict().items(), back.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    # the FrEIA IRN's weights are the authors' layout, FrEIA's Haar kernels included
    authors = freia_to_authors_state_dict(freia)
    expected = to_authors_state_dict(ours)
    assert list(authors) == list(expected)
    assert all(torch.equal(authors[k], expected[k]) for k in expected)
    x = hr()
    from_authors = freia_from_authors(dict(authors))
    torch.testing.assert_close(from_authors(x)[0], freia(x)[0], atol=0, rtol=0)
    torch.testing.assert_close(load_authors_checkpoint(authors)(x)[0], ours(x)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="expected a FrEIAIRN"):
        ours_from_freia(ours)
    with pytest.raises(ValueError, match="expected our IRN"):
        freia_from_ours(freia)


def test_same_seed_draws_the_same_initial_weights():
    torch.manual_seed(10)
    ours = IRN(IRNConfig(scale=2, **TINY))
    torch.manual_seed(10)
    freia = FrEIAIRN(IRNConfig(scale=2, **TINY))
    mapped = ours_from_freia(freia)
    assert all(
        torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), mapped.state_dict().values(), strict=True)
    )


def test_compare_script_equality_and_model_flag():
    row = compare_freia_irn.equality(2, torch.float32, batch=1, patch=16)
    assert row["params_ours"] == row["params_freia"]
    assert row["forward_max_abs"] < 1e-5 and row["inverse_max_abs"] < 1e-5
    assert max(row["losses_rel"].values()) < 1e-5 and row["grad_rel"] < 1e-3
    assert compare_freia.pop_model(["--model", "irn", "--quick"]) == ("irn", ["--quick"])
    assert compare_freia.pop_model(["--epochs", "1"]) == ("glow", ["--epochs", "1"])
    with pytest.raises(SystemExit):
        compare_freia.pop_model(["--model=flow"])


# ---------------------------------------------------------------------------------------------
# The behaviour differences (docs/freia.md)
# ---------------------------------------------------------------------------------------------


def test_freia_computes_logdets_even_with_jac_false():
    inn = build_sequence_inn(IRNConfig(scale=2, **TINY), patch=8)
    perturb_(inn, std=0.05)
    x = hr(size=8)
    _, with_jac = inn(x, jac=True)
    _, without = inn(x, jac=False)
    assert torch.is_tensor(without) and torch.equal(without, with_jac)
    assert without.abs().min() > 0  # the log-dets were computed, not skipped


def test_freia_default_haar_inverse_modifies_the_callers_tensor():
    x = hr(size=8)
    default = Fm.HaarDownsampling([(3, 8, 8)])
    (y,), _ = default((x,))
    kept = y.clone()
    default((y,), rev=True)
    assert not torch.equal(y, kept)  # scaled in place by the inverse
    torch.testing.assert_close(y, kept * 0.5)
    wavelet_order = Fm.HaarDownsampling([(3, 8, 8)], order_by_wavelet=True, rebalance=0.5)
    (y,), _ = wavelet_order((x,))
    kept = y.clone()
    wavelet_order((y,), rev=True)
    assert torch.equal(y, kept)  # the permutation copies first
    ours = HaarDownsampling(3)
    y, _ = ours(x)
    kept = y.clone()
    ours.inverse(y)
    assert torch.equal(y, kept)


def test_freia_checks_shapes_only_at_construction():
    with pytest.raises(ValueError, match="odd number"):
        inn = Ff.SequenceINN(3, 7, 7)
        inn.append(Fm.HaarDownsampling, order_by_wavelet=True, rebalance=0.5)
    ours, freia = tiny_pair(2)  # FrEIA's network was built for 3 x 144 x 144
    odd = hr(size=9)
    y, _ = freia.operations.inn(odd)  # no error: the stride-2 convolution drops a row/column
    x, _ = freia.operations.inn(y, rev=True)
    assert x.shape[-1] == 8  # the round trip silently lost the last row and column
    with pytest.raises(ValueError, match="multiples of the scale"):
        ours(odd)
    with pytest.raises(ValueError, match="multiples of the scale"):
        freia(odd)  # through our IRN wrapper, the check is ours


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``model(x)``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, logdet = model(x)
    (y.sum() + logdet.sum()).backward()
    return sum(storages.values())


def test_freia_has_no_memory_saving_backprop():
    with pytest.raises(ValueError, match="memory-saving"):
        FrEIAIRN(IRNConfig(scale=2, **TINY), memory_saving=True)
    x = hr(batch=1, size=16)
    saved = {}
    for blocks in (2, 6):
        cfg = IRNConfig(scale=2, blocks_per_level=blocks, gc=4)
        torch.manual_seed(0)
        saved["freia", blocks] = _saved_bytes(FrEIAIRN(cfg), x)
        saved["ours", blocks] = _saved_bytes(IRN(cfg, memory_saving=True), x)
    # FrEIA keeps every coupling's activations: grows with depth; ours keeps the output only
    assert saved["freia", 6] > 2 * saved["freia", 2]
    assert saved["ours", 6] == saved["ours", 2]
    assert saved["ours", 6] < saved["freia", 2]
