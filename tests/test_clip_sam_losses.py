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
