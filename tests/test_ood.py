"""The out-of-distribution warning (irn/ood.py): statistics, reference, warning, checkpoint."""

import numpy as np
import torch

import train_irn
from common.checkpoint import load_checkpoint
from irn.checkpoints import load_irn
from irn.data import sample_photos
from irn.model import IRN, IRNConfig
from irn.ood import check_image, crops, forward_stats, reference_stats
from tests.flow_checks import perturb_


def _model() -> IRN:
    torch.manual_seed(0)
    return perturb_(IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4)), std=0.01, seed=0).eval()


def _ood_image(size: int = 256) -> np.ndarray:
    """Saturated pixel noise: every 4x4 block holds the largest detail z can carry."""
    rng = np.random.default_rng(0)
    return (rng.random((size, size, 3)) > 0.5).astype(np.float32)


def test_crops_cover_the_image_and_keep_the_scale():
    img = np.zeros((600, 1000, 3), np.float32)
    parts = crops(img, 4, 256)
    assert len(parts) == 5 and all(p.shape == (256, 256, 3) for p in parts)
    assert len(crops(np.zeros((130, 203, 3), np.float32), 4, 256)) == 1
    assert crops(np.zeros((130, 203, 3), np.float32), 4, 256)[0].shape == (128, 200, 3)


def test_warning_fires_on_ood_image_not_on_validation_images():
    model = _model()
    train = [i.load() for i in sample_photos("train", "classic")]
    reference = reference_stats(model, train)
    assert reference["images"] == 6 and reference["z_rms_max"] > 0
    info = {"forward_stats": reference}
    for item in sample_photos("val", "broad"):
        stats, warning = check_image(model, item.load(), item.name, info)
        assert warning is None, (item.name, stats, reference)
    stats, warning = check_image(model, _ood_image(), "noise.png", info)
    assert warning is not None and "noise.png" in warning, (stats, reference)
    assert stats["z_rms"] > 2 * reference["z_rms_max"]
    # no reference stored (an older checkpoint, the authors' weights): no warning
    assert check_image(model, _ood_image(), "noise.png", {})[1] is None


def test_clipping_statistic_counts_lr_outside_the_range():
    model = _model()
    flat = np.full((64, 64, 3), 0.5, np.float32)
    assert forward_stats(model, flat)["clip"] == 0.0
    # an image beyond white (the statistic is on the float LR', before the 8-bit clip)
    assert forward_stats(model, flat * 2.2)["clip"] > 0.9


def test_training_stores_the_reference_in_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16",
            "--iters", "2", "--val-every", "2", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    train_irn.main(argv)
    ckpt = load_checkpoint(out / "last.pt")
    stats = ckpt["extra"]["forward_stats"]
    assert stats["images"] == 8 and {"z_rms_max", "lr_rmse_max", "clip_max"} <= set(stats)
    _, info = load_irn(out / "last.pt")
    assert info["forward_stats"] == stats
