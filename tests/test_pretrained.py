"""The model that ships with the package: it matches the current CPU recipe, and the CLIs use it without --weights."""

import numpy as np
import pytest
import yaml

from conftest import REPO
from llmhdr_basicsr import infer, pretrained, tonemap_cli
from llmhdr_basicsr.utils.hdr_io import read_hdr, read_image, write_hdr, write_ldr
from llmhdr_basicsr.utils.tonemap import srgb_decode_np

FAST = ['--quiet', '--device', 'cpu', '--tile', '0']


def ldr_image(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * 0.9 + 0.05
    img[: h // 4, : w // 4] = 1.0  # a clipped highlight
    return np.clip(img, 0, 1)


def test_bundled_model_was_trained_with_the_current_recipe():
    """options/llmhdr_cpu.yml and the shipped model agree; a change of the recipe fails here until it is retrained
    (``scripts/bundle_model.py``)."""
    meta = pretrained.metadata()
    assert meta, 'llmhdr_basicsr/pretrained/cyclehdr_cpu.json is missing'
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_cpu.yml').read_text())
    assert meta['recipe_digest'] == pretrained.recipe_digest(opt), (
        'options/llmhdr_cpu.yml changed since the bundled model was trained: retrain it and run scripts/bundle_model.py'
    )
    assert meta['iteration'] == opt['train']['total_iter']
    for direction in pretrained.CHECKPOINTS:
        pretrained.bundled_checkpoint(direction)  # both files present


def test_recipe_digest_sees_training_options_but_not_paths():
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_cpu.yml').read_text())
    base = pretrained.recipe_digest(opt)
    moved = yaml.safe_load((REPO / 'options' / 'llmhdr_cpu.yml').read_text())
    moved['datasets']['train']['dataroot_ldr'] = '/elsewhere'
    moved['logger']['print_freq'] = 7
    assert pretrained.recipe_digest(moved) == base
    changed = yaml.safe_load((REPO / 'options' / 'llmhdr_cpu.yml').read_text())
    changed['train']['camera_opt']['loss_weight'] = 1.0
    assert pretrained.recipe_digest(changed) != base
    changed = yaml.safe_load((REPO / 'options' / 'llmhdr_cpu.yml').read_text())
    changed['datasets']['train']['crop_size'] = 64
    assert pretrained.recipe_digest(changed) != base


def test_infer_without_weights_uses_the_bundled_trained_generator(tmp_path, capsys):
    """``llmhdr-infer -i photo -o out`` on a fresh install: the bundled G_Y runs, and it is trained (an untrained
    FeedbackUNet writes exactly the linearised input)."""
    write_ldr(tmp_path / 'photo.png', ldr_image())
    code = infer.main(['-i', str(tmp_path / 'photo.png'), '-o', str(tmp_path / 'out'), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert pretrained.CHECKPOINTS['ldr2hdr'] in out
    hdr = read_hdr(tmp_path / 'out' / 'photo.exr')
    assert hdr.shape == (40, 56, 3) and np.isfinite(hdr).all() and hdr.min() >= 0
    linear = srgb_decode_np(read_image(tmp_path / 'photo.png')[0])
    assert np.abs(np.log2((hdr + 1e-3) / (linear + 1e-3))).mean() > 0.05
    assert (tmp_path / 'out' / 'photo_reinhard.png').exists()


def test_tonemap_without_weights_uses_the_bundled_g_x(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = (rng.random((36, 44, 3)) * 2 + 0.05).astype(np.float32)
    img[5:9, 5:9] = 60.0
    write_hdr(tmp_path / 'scene.exr', img)
    code = tonemap_cli.main(['-i', str(tmp_path / 'scene.exr'), '-o', str(tmp_path / 'out'), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert pretrained.CHECKPOINTS['hdr2ldr'] in out
    ldr, is_hdr = read_image(tmp_path / 'out' / 'scene.png')
    assert not is_hdr and ldr.shape == (36, 44, 3) and 0 < ldr.mean() < 1


def test_missing_bundled_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, 'HERE', str(tmp_path))
    write_ldr(tmp_path / 'photo.png', ldr_image())
    code = infer.main(['-i', str(tmp_path / 'photo.png'), '-o', str(tmp_path / 'out'), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert 'bundled model' in err and '--weights' in err and 'Traceback' not in err


@pytest.mark.parametrize('direction', sorted(pretrained.CHECKPOINTS))
def test_bundled_checkpoints_are_small_and_load_strictly(direction):
    loaded = infer.load_network(direction)
    assert loaded.arch_type == 'FeedbackUNet'
    size = (REPO / 'llmhdr_basicsr' / 'pretrained' / pretrained.CHECKPOINTS[direction]).stat().st_size
    assert size < 5 * 2**20
