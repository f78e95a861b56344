"""CLIPContrastiveLoss (L_con) and SAMSemanticLoss (L_sem) with tiny random backbones, CPU only, no network."""

from __future__ import annotations

import open_clip
import pytest
import torch

from conftest import DisabledWarnings
from llmhdr_basicsr.losses.clip_contrastive_loss import CLIP_ENV_VAR, CLIPContrastiveLoss
from llmhdr_basicsr.losses.sam_semantic_loss import (
    SAM_ENV_VAR,
    SAMSemanticLoss,
    mask_agreement,
    segment_consistency,
)
from llmhdr_basicsr.utils.ldr_view import LDRGlobalView, apply_flip_code, apply_flip_code_np, crop_window
from llmhdr_basicsr.utils.tonemap import hist_equalize
from llmhdr_basicsr.utils.weights import LRUCache, load_state_dict_file, resolve_weights

# offline-assets.md §4: the tiny open_clip stand-in (3.4 M params)
TINY_CLIP = {
    'embed_dim': 64,
    'vision_cfg': {'image_size': 64, 'layers': 2, 'width': 64, 'patch_size': 16, 'head_width': 32},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 2},
}
OTHER_CLIP = {  # a different architecture, for the wrong-checkpoint test
    'embed_dim': 32,
    'vision_cfg': {'image_size': 64, 'layers': 1, 'width': 32, 'patch_size': 16, 'head_width': 16},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1},
}
TINY_ARCH, OTHER_ARCH = 'llmhdr-test-tiny-clip', 'llmhdr-test-other-clip'


def tiny_clip(seed: int = 0, **kwargs) -> CLIPContrastiveLoss:
    torch.manual_seed(seed)
    kwargs.setdefault('random_weights', True)
    return CLIPContrastiveLoss(arch=TINY_ARCH, model_cfg=TINY_CLIP, **kwargs)


def tiny_sam(seed: int = 0, **kwargs) -> SAMSemanticLoss:
    torch.manual_seed(seed)
    kwargs.setdefault('random_weights', True)
    kwargs.setdefault('input_size', 64)
    kwargs.setdefault('points_per_side', 2)
    return SAMSemanticLoss(variant='tiny', **kwargs)


def images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Distinct display-referred test images: a smooth gradient pattern per image plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing='ij')
    out = []
    for i in range(n):
        angle = torch.tensor(i * 1.3)
        wave = torch.sin(6.0 * (xx * torch.cos(angle) + yy * torch.sin(angle)) + i)
        base = torch.stack([wave, wave.roll(i + 1, 0), -wave]) * 0.3 + 0.5
        out.append((base + 0.1 * torch.rand(3, size, size, generator=g)).clamp(0, 1))
    return torch.stack(out)


def count_calls(module: torch.nn.Module) -> list[tuple]:
    """Record the input shape of every forward call of ``module`` (a real hook, not a mock)."""
    calls: list[tuple] = []
    module.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    return calls


# ------------------------------------------------------------------------------------------------------ weights
def test_resolve_weights_order_and_errors(tmp_path, monkeypatch):
    a, b = tmp_path / 'a.pth', tmp_path / 'b.pth'
    a.write_bytes(b'x')
    b.write_bytes(b'x')
    monkeypatch.setenv('LLMHDR_TEST_WEIGHTS', str(b))
    assert resolve_weights(str(a), 'LLMHDR_TEST_WEIGHTS', 'w', 'hint') == str(a.resolve())  # option wins
    assert resolve_weights(None, 'LLMHDR_TEST_WEIGHTS', 'w', 'hint') == str(b.resolve())  # then the variable
    monkeypatch.delenv('LLMHDR_TEST_WEIGHTS')
    assert resolve_weights(None, 'LLMHDR_TEST_WEIGHTS', 'w', 'hint', allow_missing=True) is None
    with pytest.raises(FileNotFoundError, match='put it here'):
        resolve_weights(None, 'LLMHDR_TEST_WEIGHTS', 'w', 'put it here')
    with pytest.raises(FileNotFoundError, match='nope.pth'):  # a configured path must exist, even if allow_missing
        resolve_weights(str(tmp_path / 'nope.pth'), None, 'w', 'hint', allow_missing=True)


def test_load_state_dict_file_unwraps(tmp_path):
    state = {'layer.weight': torch.arange(4.0)}
    for i, wrapped in enumerate(({'state_dict': state}, {'model': state}, {'params': state, 'params_ema': state})):
        torch.save(wrapped, tmp_path / f'{i}.pth')
        loaded = load_state_dict_file(tmp_path / f'{i}.pth')
        assert list(loaded) == ['layer.weight'] and torch.equal(loaded['layer.weight'], state['layer.weight'])
    torch.save({'module.layer.weight': state['layer.weight']}, tmp_path / 'dp.pth')
    assert list(load_state_dict_file(tmp_path / 'dp.pth')) == ['layer.weight']
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='junk.pth'):
        load_state_dict_file(tmp_path / 'junk.pth')


def test_lru_cache_evicts_least_recent():
    cache = LRUCache(2)
    cache.put('a', 1)
    cache.put('b', 2)
    assert cache.get('a') == 1  # 'a' is now the most recent
    cache.put('c', 3)
    assert 'b' not in cache and 'a' in cache and 'c' in cache
    assert cache.get('b') is None
    assert (cache.hits, cache.misses) == (1, 1)


# --------------------------------------------------------------------------------------------------------- CLIP
def test_clip_loss_finite_differentiable_and_frozen():
    loss = tiny_clip()
    loss.train()  # the owner switches to train mode: the encoder must stay in eval mode
    assert not loss.encoder.training
    output = images(3, seed=1).requires_grad_()
    value = loss(output, images(3))
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.encoder.parameters())
    assert loss.embed_dim == 64
    emb = loss.embed(images(2))
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_clip_cache_hits_and_encoder_calls():
    loss = tiny_clip()
    calls = count_calls(loss.encoder)
    ldr, keys = images(3), ['a.png|0,0,48,48', 'b.png|0,0,48,48', 'c.png|0,0,48,48']
    first = loss(images(3, seed=1), ldr, keys=keys)
    assert len(calls) == 2 and (loss.cache.hits, loss.cache.misses) == (0, 3)
    second = loss(images(3, seed=1), ldr, keys=keys)
    assert len(calls) == 3, 'a warm cache must encode only the reconstruction'
    assert (loss.cache.hits, loss.cache.misses) == (3, 3)
    assert torch.allclose(first, second, atol=1e-6)
    assert torch.allclose(loss.embed_ldr(ldr, keys), loss.embed_ldr(ldr, None), atol=1e-6)
    with pytest.raises(ValueError, match='3 strings'):
        loss(images(3), ldr, keys=['only-one'])


def test_clip_infonce_matched_lower_than_shuffled():
    loss = tiny_clip()
    ldr = images(4)
    matched = hist_equalize(ldr)  # E(output_i) == E(h(x_i)): every positive pair has cosine 1
    shuffled = matched.roll(1, dims=0)
    with torch.no_grad():
        assert loss(matched, ldr) < loss(shuffled, ldr)


def test_clip_batch_of_one_is_one_minus_cosine():
    loss = tiny_clip(loss_weight=2.0)
    ldr, other = images(1), images(1, seed=5).flip(-1)
    with torch.no_grad():
        assert abs(float(loss(hist_equalize(ldr), ldr))) < 1e-5
        cos = (loss.embed(hist_equalize(ldr)) * loss.embed(other)).sum()
        assert torch.allclose(loss(other, ldr), 2.0 * (1 - cos), atol=1e-6)


def test_clip_allow_missing_disables_with_one_warning(monkeypatch):
    """Exactly one warning: a UserWarning in library use, or a record on BasicSR's logger inside a run."""
    monkeypatch.delenv(CLIP_ENV_VAR, raising=False)
    with DisabledWarnings('CLIPContrastiveLoss') as caught:
        loss = CLIPContrastiveLoss(arch='ViT-B-32', allow_missing=True)
        value = loss(images(2), images(2))
    assert len(caught.messages) == 1 and CLIP_ENV_VAR in caught.messages[0]
    assert loss.enabled is False and float(value) == 0.0


def test_clip_missing_checkpoint_names_env_var(monkeypatch):
    monkeypatch.delenv(CLIP_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=CLIP_ENV_VAR):
        CLIPContrastiveLoss(arch='ViT-B-32')


def test_clip_loads_checkpoint_from_env_and_rejects_other_arch(tmp_path, monkeypatch):
    source = tiny_clip(seed=3)  # registers the tiny config
    torch.manual_seed(3)
    full = open_clip.create_model(TINY_ARCH, pretrained=None)
    torch.save(full.state_dict(), tmp_path / 'tiny_clip.pth')
    monkeypatch.setenv(CLIP_ENV_VAR, str(tmp_path / 'tiny_clip.pth'))
    loaded = tiny_clip(seed=99, random_weights=False)
    assert loaded.checkpoint == str((tmp_path / 'tiny_clip.pth').resolve())
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(loaded.embed(x), reference_embed(full, x, source), atol=1e-5)

    CLIPContrastiveLoss(arch=OTHER_ARCH, model_cfg=OTHER_CLIP, random_weights=True)  # registers the other config
    torch.save(open_clip.create_model(OTHER_ARCH, pretrained=None).state_dict(), tmp_path / 'other.pth')
    with pytest.raises(ValueError, match=r"other\.pth.*does not fit open_clip architecture 'llmhdr-test-tiny-clip'"):
        tiny_clip(checkpoint=str(tmp_path / 'other.pth'), random_weights=False)


def reference_embed(model, x: torch.Tensor, loss: CLIPContrastiveLoss) -> torch.Tensor:
    """Reference embedding through the full open_clip model (resize + CLIP mean/std as the loss documents)."""
    x = torch.nn.functional.interpolate(x, size=loss.image_size, mode='bilinear', antialias=True)
    return torch.nn.functional.normalize(model.encode_image((x - loss.mean) / loss.std), dim=-1)


# ---------------------------------------------------------------------------------------------------------- SAM
@pytest.mark.parametrize('formulation', ['segment_consistency', 'mask_agreement'])
def test_sam_loss_finite_differentiable_and_frozen(formulation):
    loss = tiny_sam(formulation=formulation)
    loss.train()
    assert not loss.sam.training
    output = images(2, seed=1).requires_grad_()
    value = loss(output, images(2))
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.sam.parameters())


def test_sam_input_size_honoured():
    for size in (64, 96):
        loss = tiny_sam(input_size=size, points_per_side=3)
        calls = count_calls(loss.sam.image_encoder)
        masks = loss.ldr_masks(images(2, size=40))
        assert calls == [(2, 3, size, size)]
        grid = size // 16
        assert loss.sam.image_encoder.pos_embed.shape[1:3] == (grid, grid)
        assert masks.shape == (2, 3 * 9, 4 * grid, 4 * grid) == (2, *loss.mask_shape)
        assert masks.dtype == torch.bool
    with pytest.raises(ValueError, match='multiple of 16'):
        tiny_sam(input_size=70)


@pytest.mark.parametrize(('formulation', 'warm_calls'), [('segment_consistency', 0), ('mask_agreement', 1)])
def test_sam_cache_hits_and_encoder_calls(formulation, warm_calls):
    loss = tiny_sam(formulation=formulation)
    calls = count_calls(loss.sam.image_encoder)
    ldr, keys = images(2), ['a|crop0', 'b|crop0']
    loss(images(2, seed=1), ldr, keys=keys)
    cold = len(calls)
    assert cold == 1 + warm_calls and (loss.cache.hits, loss.cache.misses) == (0, 2)
    loss(images(2, seed=1), ldr, keys=keys)
    assert len(calls) - cold == warm_calls and (loss.cache.hits, loss.cache.misses) == (2, 2)
    assert torch.equal(loss.ldr_masks(ldr, keys), loss.ldr_masks(ldr, None))


def test_sam_disk_cache_reused_by_new_instance(tmp_path):
    ldr, keys = images(2), ['x.png|0,0,48,48', 'y.png|0,0,48,48']
    first = tiny_sam(seed=0, cache_dir=str(tmp_path))
    masks = first.ldr_masks(ldr, keys)
    assert len(list(tmp_path.rglob('*.npy'))) == 2

    second = tiny_sam(seed=0, cache_dir=str(tmp_path))  # same weights -> same fingerprint -> same folder
    calls = count_calls(second.sam.image_encoder)
    assert torch.equal(second.ldr_masks(ldr, keys), masks)
    assert calls == [] and second.disk_hits == 2

    other = tiny_sam(seed=1, cache_dir=str(tmp_path))  # other weights must not read stale masks
    assert other.fingerprint != first.fingerprint
    other_calls = count_calls(other.sam.image_encoder)
    other.ldr_masks(ldr, keys)
    assert len(other_calls) == 1 and other.disk_hits == 0


def test_sam_allow_missing_and_missing_checkpoint(monkeypatch):
    monkeypatch.delenv(SAM_ENV_VAR, raising=False)
    with DisabledWarnings('SAMSemanticLoss') as caught:
        loss = SAMSemanticLoss(variant='vit_b', allow_missing=True)
        value = loss(images(1), images(1))
    assert len(caught.messages) == 1
    assert loss.enabled is False and float(value) == 0.0
    with pytest.raises(FileNotFoundError, match=SAM_ENV_VAR):
        SAMSemanticLoss(variant='vit_b')


def test_sam_checkpoint_roundtrip_and_wrong_arch(tmp_path, monkeypatch):
    source = tiny_sam(seed=4)
    torch.manual_seed(4)
    from llmhdr_basicsr.losses.sam_semantic_loss import build_tiny_sam

    torch.save({'model': build_tiny_sam().state_dict()}, tmp_path / 'tiny_sam.pth')
    monkeypatch.setenv(SAM_ENV_VAR, str(tmp_path / 'tiny_sam.pth'))
    loaded = tiny_sam(seed=123, random_weights=False)
    assert loaded.fingerprint == source.fingerprint
    assert torch.equal(loaded.ldr_masks(images(1)), source.ldr_masks(images(1)))

    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY_ARCH, pretrained=None).state_dict(), tmp_path / 'clip_not_sam.pth')
    with pytest.raises(ValueError, match=r"clip_not_sam\.pth.*does not fit SAM variant 'tiny'"):
        tiny_sam(checkpoint=str(tmp_path / 'clip_not_sam.pth'), random_weights=False)


def test_segment_consistency_values():
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, :, :4] = True  # left half
    masks[:, 1, :, 4:] = True  # right half
    split_lr = torch.zeros(1, 3, 8, 8)
    split_lr[..., 4:] = 1.0
    split_tb = split_lr.transpose(-1, -2).contiguous()
    assert float(segment_consistency(split_lr, masks)) < 1e-6  # constant inside each segment
    assert abs(float(segment_consistency(split_tb, masks)) - 1.0) < 1e-4  # segments explain nothing


def test_mask_agreement_prefers_matching_logits():
    targets = torch.rand(1, 6, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    agree = (targets.float() * 2 - 1) * 8
    assert mask_agreement(agree, targets) < mask_agreement(-agree, targets)
    assert float(mask_agreement(agree, targets)) < 0.01


# ------------------------------------------------------------------------------------- whole-image LDR view (issue 5)
def crops_of(full: torch.Tensor, boxes: list[tuple[int, int, int, int, int]]) -> tuple[torch.Tensor, LDRGlobalView]:
    """Crops ``full[index, :, top:top+size, left:left+size]`` (flip code ``code`` applied) and their global view.

    Args:
        full: ``(K, 3, S, S)`` whole images; the global view is the whole image itself (G = S).
        boxes: per sample ``(index, top, left, size, code)``.
    """
    s = full.shape[-1]
    crops, windows = [], []
    for index, top, left, size, code in boxes:
        crops.append(apply_flip_code(full[index, :, top : top + size, left : left + size], code))
        windows.append(torch.from_numpy(crop_window(top, left, size, size, s, s, code)))
    indices = [b[0] for b in boxes]
    view = LDRGlobalView(images=full[indices], image_keys=[f'img{i}' for i in indices], windows=torch.stack(windows))
    return torch.stack(crops), view


def test_clip_image_view_hits_the_cache_across_crops():
    loss = tiny_clip()
    calls = count_calls(loss.encoder)
    full = images(2, size=64)
    ldr_a, view_a = crops_of(full, [(0, 0, 0, 32, 0), (1, 8, 16, 32, 1)])
    ldr_b, view_b = crops_of(full, [(0, 30, 20, 32, 5), (1, 2, 3, 32, 0)])  # other crops of the same images
    assert not torch.equal(ldr_a, ldr_b)
    first = loss(images(2, size=32, seed=1), ldr_a, ['ka0', 'ka1'], global_view=view_a)
    assert len(calls) == 2 and (loss.cache.hits, loss.cache.misses) == (0, 2)
    assert calls[0][0] == 2  # the two whole images, once
    second = loss(images(2, size=32, seed=1), ldr_b, ['kb0', 'kb1'], global_view=view_b)
    assert len(calls) == 3, 'with the cache warm only the reconstruction is encoded, whatever the crop'
    assert (loss.cache.hits, loss.cache.misses) == (2, 2)
    assert torch.allclose(first, second, atol=1e-6)  # the LDR side is the whole image: crops do not matter
    with torch.no_grad():
        direct = loss.embed(hist_equalize(full))
    assert torch.allclose(loss.embed_ldr_view(view_b), direct, atol=1e-5)


def test_clip_same_image_crops_are_not_negatives():
    loss = tiny_clip()
    full = images(2, size=48)
    ldr, view = crops_of(full, [(0, 0, 0, 32, 0), (0, 16, 16, 32, 0), (1, 4, 4, 32, 0)])
    output = images(3, size=32, seed=7)
    with torch.no_grad():
        e_l, e_o = loss.embed(hist_equalize(full))[[0, 0, 1]], loss.embed(output)
        sim = e_l @ e_o.t() / loss.temperature
        # rows 0 and 1 (image 0): the other crop of image 0 is left out of the denominator; row 2 sees all three
        expected = torch.stack(
            [
                -torch.log_softmax(sim[0, [0, 2]], 0)[0],
                -torch.log_softmax(sim[1, [1, 2]], 0)[0],
                -torch.log_softmax(sim[2], 0)[2],
            ]
        ).mean()
        assert torch.allclose(loss(output, ldr, global_view=view), expected, atol=1e-5)
        unmasked = torch.nn.functional.cross_entropy(sim, torch.arange(3))
        assert not torch.allclose(expected, unmasked, atol=1e-4)
        # a batch of crops of one image has no negative at all: 1 - cos per sample, as for a batch of one
        ldr1, view1 = crops_of(full, [(1, 0, 0, 32, 0), (1, 10, 6, 32, 3)])
        cos = (loss.embed(hist_equalize(full[1:])) * loss.embed(output[:2])).sum(-1)
        assert torch.allclose(loss(output[:2], ldr1, global_view=view1), (1 - cos).mean(), atol=1e-5)


def test_clip_image_view_gradients_and_modes():
    loss = tiny_clip()
    loss.train()
    full = images(2, size=48)
    ldr, view = crops_of(full, [(0, 0, 0, 32, 0), (1, 16, 8, 32, 6)])
    output = images(2, size=32, seed=1).requires_grad_()
    value = loss(output, ldr, global_view=view)
    value.backward()
    assert torch.isfinite(value) and output.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.encoder.parameters())
    crop_mode = tiny_clip(ldr_view='crop')  # the crop is embedded even though the batch has the whole image
    crop_mode(output.detach(), ldr, ['c0', 'c1'], global_view=view)
    assert 'c0' in crop_mode.cache and not any(k.startswith('image:') for k in crop_mode.cache._data)
    with pytest.raises(ValueError, match='ldr_view'):
        tiny_clip(ldr_view='image')(output.detach(), ldr)  # no whole-image view in this batch
    with pytest.raises(ValueError, match='ldr_view'):
        tiny_clip(ldr_view='global')


class FixedMaskSAM(SAMSemanticLoss):
    """A tiny SAM whose 'segmenter' returns given binary masks for any image: the geometry under test is known."""

    def __init__(self, masks: torch.Tensor, **kwargs) -> None:
        kwargs.setdefault('random_weights', True)
        super().__init__(variant='tiny', input_size=64, points_per_side=2, **kwargs)
        assert masks.shape == self.mask_shape
        self.fixed = masks

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder_calls += 1
        self.images_encoded += images.shape[0]
        return (self.fixed.float() * 20 - 10).expand(images.shape[0], -1, -1, -1)


def test_sam_window_masks_follow_the_crop_window_and_flip():
    """Whole-image masks (16x16 grid over a 64 px image) cut to a 32 px crop = the 8x8 block under the window,
    doubled (nearest) to the 16x16 grid and flipped like the crop; masks empty or full inside the window drop out."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 16, 16, generator=g) > 0.5
    masks[9] = False
    masks[9, :2, :2] = True  # a segment outside the window
    masks[10] = False  # empty
    masks[11] = True  # fills every window
    loss = FixedMaskSAM(masks)
    full = images(1, size=64)
    boxes = [(0, 16, 32, 32, code) for code in range(8)]  # crop rows 16..47, cols 32..63 = mask rows 4..11, cols 8..15
    _, view = crops_of(full, boxes)
    cut = loss.window_masks(view)
    assert cut.shape == (8, 12, 16, 16) and set(cut.unique().tolist()) == {0.0, 1.0}
    block = masks[:, 4:12, 8:16].numpy()
    doubled = block.repeat(2, axis=1).repeat(2, axis=2)
    for code in range(8):
        expected = apply_flip_code_np(doubled.transpose(1, 2, 0), code).transpose(2, 0, 1)
        got = cut[code].bool().numpy()
        assert (got[:9] == expected[:9]).all(), f'flip code {code}'
        assert cut[code, 9:].abs().sum() == 0, 'empty and full masks must be weighted out'
    assert loss.encoder_calls == 1 and loss.cache.misses == 1  # eight crops of one image: segmented once


def test_sam_image_view_loss_uses_the_segments_under_the_window():
    """Whole image split into left/right segments; the crop straddles the border. An output that is constant on each
    side of the border (in the crop's orientation) scores ~0, one split the other way ~1."""
    masks = torch.zeros(12, 16, 16, dtype=torch.bool)
    masks[0, :, :8] = True  # left half of the image
    masks[1, :, 8:] = True  # right half
    loss = FixedMaskSAM(masks)
    full = images(1, size=64)
    for code in (0, 4):  # as cut, and transposed: the border turns horizontal
        _, view = crops_of(full, [(0, 16, 16, 32, code)])  # cols 16..47: the border at crop column 16
        split = torch.zeros(1, 3, 32, 32)
        split[..., 16:] = 1.0  # border between columns 15 and 16
        matching, crossing = (split, split.transpose(-1, -2)) if code == 0 else (split.transpose(-1, -2), split)
        with torch.no_grad():
            assert float(loss(matching, matching, global_view=view)) < 0.05
            assert float(loss(crossing, crossing, global_view=view)) > 0.9


def test_sam_image_view_hits_the_cache_across_crops(tmp_path):
    loss = tiny_sam(cache_dir=str(tmp_path))
    calls = count_calls(loss.sam.image_encoder)
    full = images(2, size=64)
    ldr_a, view_a = crops_of(full, [(0, 0, 0, 32, 0), (1, 8, 16, 32, 1)])
    ldr_b, view_b = crops_of(full, [(0, 30, 20, 32, 5), (1, 2, 3, 32, 0)])
    loss.train()
    output = images(2, size=32, seed=1).requires_grad_()
    value = loss(output, ldr_a, ['ka0', 'ka1'], global_view=view_a)
    assert calls == [(2, 3, 64, 64)] and (loss.cache.hits, loss.cache.misses) == (0, 2)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(output.grad).all()
    assert all(p.grad is None and not p.requires_grad for p in loss.sam.parameters())
    loss(images(2, size=32, seed=1), ldr_b, ['kb0', 'kb1'], global_view=view_b)
    assert len(calls) == 1, 'with the cache warm no SAM pass happens, whatever the crop'
    assert (loss.cache.hits, loss.cache.misses) == (2, 2)
    assert torch.equal(loss.view_masks(view_b), loss.ldr_masks(full, None))  # same whole images
    fresh = tiny_sam(cache_dir=str(tmp_path))  # a later run reads the whole-image masks from disk
    fresh_calls = count_calls(fresh.sam.image_encoder)
    fresh(images(2, size=32, seed=1), ldr_b, global_view=view_b)
    assert fresh_calls == [] and fresh.disk_hits == 2


def test_sam_image_view_gradient_reaches_output():
    masks = torch.zeros(12, 16, 16, dtype=torch.bool)
    masks[0, :, :8] = True
    masks[1, 4:, 8:] = True
    loss = FixedMaskSAM(masks)
    loss.train()
    full = images(1, size=64)
    ldr, view = crops_of(full, [(0, 8, 16, 32, 2)])
    output = images(1, size=32, seed=3).requires_grad_()
    value = loss(output, ldr, global_view=view)
    value.backward()
    assert 0 < float(value.detach()) < 1 and output.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.sam.parameters())


def test_sam_view_modes_and_mask_agreement_keeps_the_crop():
    full = images(2, size=64)
    ldr, view = crops_of(full, [(0, 0, 0, 32, 0), (1, 8, 16, 32, 1)])
    with pytest.raises(ValueError, match='mask_agreement'):
        tiny_sam(formulation='mask_agreement', ldr_view='image')
    with pytest.raises(ValueError, match='ldr_view'):
        tiny_sam(ldr_view='image')(images(2, size=32), ldr)  # no whole-image view in this batch
    with pytest.raises(ValueError, match='min_mask_fraction'):
        tiny_sam(min_mask_fraction=0.6)
    agreement = tiny_sam(formulation='mask_agreement')  # auto -> crop for this formulation
    calls = count_calls(agreement.sam.image_encoder)
    agreement(images(2, size=32, seed=1), ldr, ['c0', 'c1'], global_view=view)
    assert calls == [(2, 3, 64, 64), (2, 3, 64, 64)] and 'c0' in agreement.cache  # LDR crops, then the output
    crop_mode = tiny_sam(ldr_view='crop')
    crop_mode(images(2, size=32, seed=1), ldr, ['c0', 'c1'], global_view=view)
    assert set(crop_mode.cache._data) == {'c0', 'c1'}


def test_model_steps_hit_the_image_caches_across_crops(tmp_path, tiny_unpaired):
    """Smoke model + tiny CLIP/SAM: from the second batch on (new random crops of the same LDR images) every LDR-side
    look-up hits, and the encoders see only the reconstructions."""
    import copy

    import numpy as np
    import yaml
    from basicsr.data import build_dataset
    from basicsr.models import build_model
    from torch.utils.data import DataLoader

    from conftest import REPO

    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['datasets']['train'].update(
        dataroot_ldr=str(tiny_unpaired[0]), dataroot_hdr=str(tiny_unpaired[1]), crop_size=32, phase='train',
        global_size=64, use_rot=True,
    )  # fmt: skip
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False, root_path=str(tmp_path))
    opt['path'].update({k: str(tmp_path / k) for k in ('experiments_root', 'models', 'training_states', 'log')})
    opt['train']['clip_opt'] = {'type': 'CLIPContrastiveLoss', 'arch': TINY_ARCH, 'model_cfg': TINY_CLIP,
                                'random_weights': True}  # fmt: skip
    opt['train']['sam_opt'] = {'type': 'SAMSemanticLoss', 'variant': 'tiny', 'random_weights': True, 'input_size': 64}
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(opt))
    dataset = build_dataset(opt['datasets']['train'])
    clip, sam = model.losses['clip_opt'], model.losses['sam_opt']
    clip_calls, sam_calls = count_calls(clip.encoder), count_calls(sam.sam.image_encoder)
    crops = set()
    for step in range(1, 4):
        np.random.seed(step)  # new crops and flips every step, same two LDR images
        batch = next(iter(DataLoader(dataset, batch_size=2, shuffle=False)))
        crops.update(batch['ldr_key'])
        model.feed_data(batch)
        assert model.ldr_global_view is not None and model.ldr_global_view.windows.shape == (2, 5)
        model.optimize_parameters(step)
        assert 'l_g_clip' in model.log_dict and 'l_g_sam' in model.log_dict
    assert len(crops) == 6, 'every step must see new crops'
    assert clip.last_ldr_view == sam.last_ldr_view == 'image'
    assert (clip.cache.hits, clip.cache.misses) == (4, 2) and (sam.cache.hits, sam.cache.misses) == (4, 2)
    assert [c[0] for c in clip_calls] == [2, 2, 2, 2] and len(
        sam_calls
    ) == 1  # step 1: LDR images + output; then output


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_image_view_losses_on_cuda_with_the_view_on_the_cpu():
    """The model leaves the whole-image view on the CPU; the losses move only what they encode."""
    full = images(2, size=64)
    ldr, view = crops_of(full, [(0, 0, 0, 32, 0), (1, 8, 16, 32, 5)])
    output = images(2, size=32, seed=1).cuda().requires_grad_()
    for loss in (tiny_clip().cuda(), tiny_sam().cuda()):
        value = loss(output, ldr.cuda(), global_view=view)
        value.backward()
        assert value.device.type == 'cuda' and torch.isfinite(value) and loss.last_ldr_view == 'image'
    assert output.grad.abs().sum() > 0
