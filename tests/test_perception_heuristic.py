"""Tests of llmhdr_basicsr.perception.heuristic: the artifact / over- / under-exposure maps (method.md §3.4)."""

import pytest
import torch

from llmhdr_basicsr.perception.heuristic import (
    MAP_NAMES,
    PerceptionMaps,
    artifact_map,
    heuristic_maps,
    local_contrast,
    over_exposure_map,
    under_exposure_map,
)

TAU = 0.95


def const(value, n=2, h=9, w=11, dtype=torch.float32):
    return torch.full((n, 3, h, w), float(value), dtype=dtype)


def checkerboard(h, w, amp, dtype=torch.float32):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    return (((yy + xx) % 2).to(dtype) * 2 - 1) * amp


@pytest.mark.parametrize('use_ref', [False, True])
def test_constant_images_known_values(use_ref):
    for value, expect_over, expect_under in [(1.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.0, 0.0)]:
        img = const(value)
        maps = heuristic_maps(img, reference=img.clone() if use_ref else None, tau=TAU)
        assert maps.over.shape == maps.under.shape == maps.artifact.shape == (2, 1, 9, 11)
        torch.testing.assert_close(maps.over, torch.full_like(maps.over, expect_over), atol=1e-6, rtol=0)
        torch.testing.assert_close(maps.under, torch.full_like(maps.under, expect_under), atol=1e-6, rtol=0)
        assert maps.artifact.abs().max() == 0  # flat image: no detail, no artifact


def test_exposure_ramp_values():
    # Y = tau + 0.5 (1 - tau) -> over = 0.5; Y = 0.25 (1 - tau) -> under = 0.75 (grey, so luma = value)
    img = torch.cat([const(TAU + 0.5 * (1 - TAU), n=1), const(0.25 * (1 - TAU), n=1)])
    over, under = over_exposure_map(img, TAU), under_exposure_map(img, TAU)
    assert over[0].allclose(torch.tensor(0.5), atol=1e-5) and over[1].abs().max() == 0
    assert under[1].allclose(torch.tensor(0.75), atol=1e-5) and under[0].abs().max() == 0


def test_channel_reduce_max_flags_single_channel_clipping():
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0  # saturated red: luma 0.2126, channel max 1
    assert over_exposure_map(red, channel_reduce='luma').max() == 0
    assert over_exposure_map(red, channel_reduce='max').min() == 1
    with pytest.raises(ValueError, match='channel_reduce'):
        heuristic_maps(red, channel_reduce='mean')


def test_range_dtype_device_on_random_images():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 3, 16, 20, generator=g)
    ref = torch.rand(3, 3, 16, 20, generator=g)
    for reference in (None, ref):
        stacked = heuristic_maps(img, reference).stack()
        assert stacked.shape == (3, 3, 16, 20) and stacked.dtype == img.dtype and stacked.device == img.device
        assert stacked.min() >= 0 and stacked.max() <= 1
    # an image compared with itself has no detail in excess of its reference
    assert heuristic_maps(img, img).artifact.abs().max() == 0


def test_artifact_map_flags_detail_missing_from_reference():
    ref = const(0.6, n=1, h=24, w=24)
    img = ref.clone()
    img[..., 4:12, 4:12] += checkerboard(8, 8, 0.2)  # hallucinated texture in the top-left
    art = artifact_map(img, ref)
    assert art[..., 6:10, 6:10].min() > 0.5  # inside the textured block
    assert art[..., 16:, 16:].abs().max() == 0  # far from it
    # the same texture already present in the reference is not an artifact
    assert artifact_map(img, img.clone()).abs().max() == 0


def test_reference_free_artifacts_only_in_bright_regions():
    tex = checkerboard(16, 16, 0.05)
    bright = const(0.93, n=1, h=16, w=16) + tex
    dark = const(0.3, n=1, h=16, w=16) + tex
    assert artifact_map(bright).min() > 0.2
    assert artifact_map(dark).abs().max() == 0


def test_fractions_stack_and_roundtrip():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 8, 8, generator=g)
    maps = heuristic_maps(img)
    fr = maps.fractions()
    assert fr._fields == MAP_NAMES
    for name in MAP_NAMES:
        assert fr._asdict()[name].shape == (2,)
        torch.testing.assert_close(fr._asdict()[name], getattr(maps, name).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(fr.total(), fr.artifact + fr.over + fr.under)
    stacked = maps.stack()
    torch.testing.assert_close(stacked[:, 1:2], maps.over)
    back = PerceptionMaps.from_stack(stacked)
    for name in MAP_NAMES:
        assert torch.equal(getattr(back, name), getattr(maps, name))


def test_batch_independence():
    g = torch.Generator().manual_seed(2)
    img, ref = torch.rand(3, 3, 12, 10, generator=g), torch.rand(3, 3, 12, 10, generator=g)
    whole = heuristic_maps(img, ref).stack()
    parts = torch.cat([heuristic_maps(img[i : i + 1], ref[i : i + 1]).stack() for i in range(3)])
    torch.testing.assert_close(whole, parts)


def test_gradients_flow_inside_the_ramps():
    img = torch.zeros(1, 3, 6, 6)
    img[0, :, :, :3] = 0.98  # over-exposed half
    img[0, :, :, 3:] = 0.01  # under-exposed half
    img.requires_grad_(True)
    heuristic_maps(img).fractions().total().sum().backward()
    assert img.grad is not None and img.grad[..., :3].gt(0).any() and img.grad[..., 3:].lt(0).any()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    img = (torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64) * 0.3 + 0.68).requires_grad_(True)
    ref = torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64) * 0.02 + 0.7
    assert torch.autograd.gradcheck(lambda x: heuristic_maps(x, ref, tau=0.8).stack(), (img,))
    assert torch.autograd.gradcheck(lambda x: heuristic_maps(x, None, artifact_sat_tau=0.6).stack(), (img,))
    assert torch.autograd.gradcheck(lambda x: local_contrast(x, 3), (img,))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='img'):
        heuristic_maps(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match='reference'):
        heuristic_maps(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 5, 4))
    with pytest.raises(ValueError, match='tau'):
        heuristic_maps(torch.rand(1, 3, 4, 4), tau=1.0)
    with pytest.raises(ValueError, match='artifact_window'):
        heuristic_maps(torch.rand(1, 3, 4, 4), artifact_window=4)
    with pytest.raises(ValueError, match='PerceptionMaps'):
        PerceptionMaps(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    img, ref = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    cpu = heuristic_maps(img, ref).stack()
    gpu = heuristic_maps(img.cuda(), ref.cuda()).stack()
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
