"""The perception loss on HDR reconstructions: its optimum is a plausible HDR image, not the linearised input.

Checks the issue's claims directly: the loss has a gradient at initialisation (an untrained generator returns the
linearised input) where the input has clipped or dark pixels and none where it has neither; the ground truth scores
better than its linearised LDR on a real scene; checkerboard and ringing outside the clipped regions are artifacts,
detail recovered inside them is not.
"""

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from llmhdr_basicsr.archs.feedback_unet_arch import FeedbackUNet
from llmhdr_basicsr.losses.perception_loss import LLMPerceptionLoss
from llmhdr_basicsr.perception.heuristic import reconstruction_maps
from llmhdr_basicsr.utils.camera import CameraParams, apply_camera, resolve_camera
from llmhdr_basicsr.utils.hdr_io import read_hdr
from llmhdr_basicsr.utils.tonemap import hdr_to_model, model_to_hdr, srgb_decode

HEADROOM = 4.0


def judge(loss, t_out, ldr):
    """The model's call: the model-domain output, its linear version and the LDR input."""
    return loss(t_out, hdr=model_to_hdr(t_out, HEADROOM), ldr=ldr)


def mid_grey_scene(h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * 0.5 + 0.25  # display values 0.25 .. 0.75: nothing clipped or dark


@pytest.mark.parametrize('kind', ['clipped', 'dark', 'neither'])
def test_gradient_at_initialisation_only_where_the_input_lacks_information(kind):
    torch.manual_seed(0)
    net = FeedbackUNet(num_feat=4, num_iter=2, headroom=HEADROOM)  # untrained: returns the linearised input
    ldr = mid_grey_scene()
    if kind == 'clipped':
        ldr[..., 4:12, 4:12] = 1.0
    elif kind == 'dark':
        ldr[..., 20:28, 20:28] = 0.0
    loss = LLMPerceptionLoss()
    value = judge(loss, net(ldr), ldr)
    value.backward()
    head = net.head.weight.grad.abs().sum() + net.head.bias.grad.abs().sum()
    if kind == 'neither':
        assert value.item() == 0 and head.item() == 0
    else:
        assert value.item() > 0 and head.item() > 0


@pytest.fixture(scope='module')
def forest():
    """A real scene, its 8-bit photo by a gamma camera clipping 8 % of the frame, and the truth at that exposure."""
    hdr = read_hdr(str(SHARED_DATA / 'hdr' / 'blender_forest.hdr'))[::4, ::4].copy()
    cam = resolve_camera(hdr, CameraParams(crf='gamma', gamma=2.2, clip_fraction=0.08))
    ldr = torch.from_numpy(apply_camera(hdr, cam)).permute(2, 0, 1)[None]
    truth = torch.from_numpy(hdr * cam.exposure).permute(2, 0, 1)[None].float()
    return ldr, truth


def test_ground_truth_scores_better_than_the_linearised_input(forest):
    ldr, truth = forest
    loss = LLMPerceptionLoss()
    t_lin = hdr_to_model(srgb_decode(ldr), HEADROOM)  # the linearised input (an untrained generator's output)
    t_gt = hdr_to_model(truth, HEADROOM)
    gt_score, lin_score = judge(loss, t_gt, ldr).item(), judge(loss, t_lin, ldr).item()
    assert gt_score < 0.7 * lin_score, (gt_score, lin_score)
    # each map on its own: the truth is not punished for the highlights the camera clipped, nor for their texture
    gt_maps = reconstruction_maps(truth, ldr)
    lin_maps = reconstruction_maps(model_to_hdr(t_lin, HEADROOM), ldr)
    assert gt_maps.over.mean() < 0.6 * lin_maps.over.mean()
    assert gt_maps.artifact.mean() < 0.01 and lin_maps.artifact.max() == 0


def test_artifacts_fire_on_checkerboard_and_ringing_not_on_recovered_detail():
    ldr = mid_grey_scene(48, 48)
    ldr[..., :16, :16] = 1.0  # a clipped block
    base = hdr_to_model(srgb_decode(ldr), HEADROOM)
    lin = model_to_hdr(base, HEADROOM)

    def artifact(t):
        return reconstruction_maps(model_to_hdr(t, HEADROOM), ldr).artifact

    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing='ij')
    checker = (((yy + xx) % 2).float() * 2 - 1) * 0.03
    assert artifact(base + checker)[..., 24:, 24:].mean() > 0.5  # checkerboard outside the clipped block
    assert artifact(base + checker)[..., 2:14, 2:14].mean() > 0.5  # and inside it
    ring = base.clone()
    ring[..., 20:22, :] += 0.15  # a bright line (ringing / halo) where the input holds all the information
    assert artifact(ring)[..., 19:23, 24:].mean() > 0.3
    recovered = lin.clone()  # a smooth, textured highlight inside the clipped block: recovered detail
    recovered[..., :16, :16] *= 2.0 + torch.sin(yy[:16, :16] / 2.0) * torch.cos(xx[:16, :16] / 3.0)
    t_rec = hdr_to_model(recovered, HEADROOM)
    assert artifact(t_rec)[..., :12, :12].max() == 0
    assert artifact(base).max() == 0


def test_maps_are_in_range_differentiable_and_checked():
    ldr = mid_grey_scene()
    ldr[..., :8, :8] = 1.0
    t = hdr_to_model(srgb_decode(ldr), HEADROOM).requires_grad_(True)
    maps = reconstruction_maps(model_to_hdr(t, HEADROOM), ldr).stack()
    assert maps.shape == (1, 3, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    maps.sum().backward()
    assert t.grad[..., :8, :8].abs().sum() > 0
    with pytest.raises(ValueError, match='shape'):
        reconstruction_maps(t, ldr[..., :16])
    with pytest.raises(TypeError, match='unknown option'):
        LLMPerceptionLoss(thresh=0.9)
    with pytest.raises(ValueError, match='both hdr and ldr'):
        LLMPerceptionLoss()(t, None, ldr=ldr)


def test_display_outputs_keep_the_display_judgement():
    """G_X's LDR output is judged as a display image: saturated pixels are over-exposed."""
    img = torch.full((1, 3, 8, 8), 0.5)
    img[..., :4, :] = 1.0
    loss = LLMPerceptionLoss(artifact_weight=0, under_weight=0)
    assert loss(img, img.clone()).item() == pytest.approx(0.5)
    assert np.isclose(loss(torch.full_like(img, 0.5), img).item(), 0.0)
