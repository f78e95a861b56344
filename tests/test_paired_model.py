"""PairedHDRModel: supervised training of any architecture in the model's HDR domain, float-HDR validation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr


@pytest.fixture
def one_pair(tmp_path):
    """One 32 x 32 scene with a highlight 6x white and its 8-bit photograph (gamma 2.2, clipped at 1)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    hdr = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.5 * np.ones_like(xx)], -1) * rng.uniform(0.8, 1.0, (32, 32, 1))
    hdr[4:12, 4:12] = 6.0
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    write_hdr(str(tmp_path / 'gt' / 'a.exr'), (hdr * 3.0).astype(np.float32))  # the file's own, arbitrary scale
    write_ldr(str(tmp_path / 'lq' / 'a.png'), np.clip(hdr, 0, 1) ** (1 / 2.2))
    return tmp_path


def _opt(root, network_g, iters=60):
    data = {'type': 'PairedLDRHDRDataset', 'dataroot_lq': str(root / 'lq'), 'dataroot_gt': str(root / 'gt'),
            'io_backend': {'type': 'disk'}}  # fmt: skip
    exp = root / 'experiments' / 'paired'
    return {
        'name': 'paired', 'model_type': 'PairedHDRModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
        'world_size': 1, 'root_path': str(root), 'manual_seed': 0,
        'datasets': {'train': {**data, 'name': 'train', 'phase': 'train', 'crop_size': None, 'use_hflip': False},
                     'val': {**data, 'name': 'val', 'phase': 'val'}},
        'network_g': network_g,
        'path': {'experiments_root': str(exp), 'models': str(exp / 'models'), 'training_states': str(exp / 'ts'),
                 'log': str(exp), 'visualization': str(exp / 'vis'), 'pretrain_network_g': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 2e-3}, 'total_iter': iters},
        'val': {'save_img': True, 'metrics': {'pu21': {'type': 'calculate_pu21_psnr'},
                                              'clip': {'type': 'calculate_pu21_psnr_clipped'}}},
    }  # fmt: skip


def _batch(opt, phase='train'):
    from basicsr.data import build_dataset

    ds = build_dataset(opt['datasets'][phase])
    item = ds[0]
    return {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in item.items()}


@pytest.mark.parametrize('network_g', [
    {'type': 'FeedbackUNet', 'num_feat': 8, 'num_iter': 1, 'headroom': 4},
    {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4, 'scale': 1},
], ids=['FeedbackUNet', 'RRDBNet'])  # fmt: skip
def test_overfits_one_pair_and_validates_in_float_hdr(one_pair, network_g):
    from basicsr.models import build_model

    torch.manual_seed(0)
    opt = _opt(one_pair, network_g)
    model = build_model(copy.deepcopy(opt))
    batch = _batch(opt)
    losses = []
    for it in range(1, 101):
        model.feed_data(batch)
        model.optimize_parameters(it)
        losses.append(model.log_dict['l_pix'])
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    # the ground truth was exposed like its LDR: white (the clipping level) at 1, the highlight at 6
    model.feed_data(batch)
    assert model.gt[..., 20:, 20:].max() < 1.0 and model.gt[..., 4:12, 4:12].mean() == pytest.approx(6.0, rel=0.1)
    from basicsr.data import build_dataset
    from torch.utils.data import DataLoader

    loader = DataLoader(build_dataset(opt['datasets']['val']), batch_size=1)
    model.validation(loader, 100, None, save_img=True)
    assert set(model.metric_results) == {'pu21', 'clip'} and all(v == v for v in model.metric_results.values())
    written = list((one_pair / 'experiments' / 'paired' / 'vis').rglob('*.exr'))
    assert written
    from llmhdr_basicsr.utils.hdr_io import read_hdr

    assert read_hdr(str(written[0])).dtype == np.float32 and read_hdr(str(written[0])).max() > 1.0  # float HDR


def test_linear_output_architectures_are_converted(one_pair):
    """An architecture that says out_domain='linear' (a classical operator) is compressed into the model domain."""
    from basicsr.models import build_model

    opt = _opt(one_pair, {'type': 'LinearizeITMO', 'out_domain': 'linear'})
    opt['is_train'] = False
    model = build_model(copy.deepcopy(opt))
    model.feed_data(_batch(opt, 'val'))
    model.test()
    lin = model.get_current_visuals()['result']
    assert lin.max() == pytest.approx(1.0, abs=1e-4)  # linearisation: white at 1, nothing above
    with pytest.raises(ValueError, match='no trainable parameters'):
        build_model(copy.deepcopy(_opt(one_pair, {'type': 'LinearizeITMO', 'out_domain': 'linear'})))
