"""LPIPS metric and loss with the backbone loaded from a local (random) torchvision checkpoint; CPU, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric

from conftest import DisabledWarnings
from llmhdr_basicsr.losses.lpips_loss import LPIPSLoss
from llmhdr_basicsr.metrics.lpips_metric import LPIPS_ENV_VAR, build_lpips, calculate_lpips, get_lpips


@pytest.fixture(scope='module')
def alex_file(tmp_path_factory) -> str:
    """A random torchvision AlexNet checkpoint in torchvision's layout (features.* + a stand-in classifier key)."""
    torch.manual_seed(0)
    state = {f'features.{k}': v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    state['classifier.6.bias'] = torch.zeros(10)  # real files carry the classifier too; it must be ignored
    path = tmp_path_factory.mktemp('lpips') / 'alexnet-random.pth'
    torch.save(state, path)
    return str(path)


def hdr_pair(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    gt = (np.stack([xx, yy, xx * yy], -1) * 2 + 0.05).astype(np.float32)
    gt[20:26, 30:36] = 40.0  # a light source
    pred = np.clip(gt + rng.normal(0, 0.3, gt.shape), 0, None).astype(np.float32)
    return pred, gt


def test_identical_images_score_zero(alex_file):
    pred, gt = hdr_pair()
    assert calculate_lpips(gt, gt, weights=alex_file) == pytest.approx(0.0, abs=1e-7)
    assert calculate_lpips(3.0 * gt, gt, weights=alex_file) == pytest.approx(0.0, abs=1e-6)  # global gain aligned
    assert calculate_lpips(pred, gt, weights=alex_file) > 1e-4
    ldr = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    assert calculate_lpips(ldr, ldr, weights=alex_file, domain='ldr') == pytest.approx(0.0, abs=1e-7)
    assert calculate_lpips(ldr, ldr[::-1].copy(), weights=alex_file, domain='ldr') == pytest.approx(
        calculate_lpips(ldr / 255.0, ldr[::-1] / 255.0, weights=alex_file, domain='ldr'), abs=1e-6
    )


def test_backbone_loaded_from_file(alex_file):
    model = build_lpips('alex', alex_file)
    saved = torch.load(alex_file, weights_only=True)
    assert torch.equal(model.net.slice1[0].weight, saved['features.0.weight'])
    assert torch.equal(getattr(model.net.slice5, '10').bias, saved['features.10.bias'])
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    assert get_lpips('alex', alex_file) is get_lpips('alex', alex_file)  # cached per (net, file, device)


def test_metric_through_basicsr_and_env_var(alex_file, monkeypatch):
    monkeypatch.setenv(LPIPS_ENV_VAR, alex_file)
    pred, gt = hdr_pair()
    value = calculate_metric({'img': pred, 'img2': gt}, {'type': 'calculate_lpips', 'better': 'lower'})
    assert value == pytest.approx(calculate_lpips(pred, gt, weights=alex_file))
    with pytest.raises(TypeError, match='netw'):
        calculate_lpips(pred, gt, netw='alex')


def test_missing_or_wrong_weights(tmp_path, monkeypatch, alex_file):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    pred, gt = hdr_pair()
    with pytest.raises(FileNotFoundError, match=LPIPS_ENV_VAR):
        calculate_lpips(pred, gt)
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        calculate_lpips(pred, gt, weights=str(tmp_path / 'absent.pth'))
    torch.save({'features.0.weight': torch.zeros(2, 2)}, tmp_path / 'broken.pth')
    with pytest.raises(ValueError, match=r"broken\.pth.*LPIPS 'alex'"):
        build_lpips('alex', str(tmp_path / 'broken.pth'))
    with pytest.raises(ValueError, match=r"alexnet-random\.pth.*LPIPS 'vgg'"):
        build_lpips('vgg', alex_file)


def test_lpips_loss_differentiable_frozen_and_weighted(alex_file):
    loss = build_loss({'type': 'LPIPSLoss', 'weights': alex_file, 'loss_weight': 2.0})
    loss.train()
    assert not loss.lpips.training
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 48, 48, generator=g)
    pred = (target + 0.2 * torch.rand(2, 3, 48, 48, generator=g)).clamp(0, 1).requires_grad_()
    value = loss(pred, target)
    value.backward()
    assert torch.isfinite(value) and value > 0 and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.lpips.parameters())
    with torch.no_grad():
        assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-7)
        single = LPIPSLoss(weights=alex_file)(pred, target)
    assert float(value.detach()) == pytest.approx(2.0 * float(single), rel=1e-5)


def test_lpips_loss_allow_missing(monkeypatch):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    with DisabledWarnings('LPIPSLoss') as caught:
        loss = LPIPSLoss(allow_missing=True)
        value = loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert len(caught.messages) == 1
    assert loss.enabled is False and float(value) == 0.0
