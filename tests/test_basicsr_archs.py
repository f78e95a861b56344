"""BasicSR's own architectures in the plugin's models: RRDBNet as both CycleHDR generators with BasicSR's
discriminators, and RRDBNet trained supervised with PairedHDRModel, each through BasicSR's unchanged ``train.py``."""

from __future__ import annotations

import copy
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, assert_ok, make_unpaired_folders, run_python

BASICSR_TRAIN = Path(sysconfig.get_paths()['purelib']) / 'basicsr' / 'train.py'


def test_accepted_kwargs_gives_each_architecture_what_its_forward_takes():
    from basicsr.archs.rrdbnet_arch import RRDBNet

    from llmhdr_basicsr.archs.arch_util import accepted_kwargs
    from llmhdr_basicsr.archs.feedback_unet_arch import FeedbackUNet

    kwargs = {'maps': torch.zeros(1, 3, 8, 8), 'return_all': True, 'guidance': None}
    rrdb = RRDBNet(3, 3, scale=1, num_feat=4, num_block=1, num_grow_ch=2)
    assert accepted_kwargs(rrdb, kwargs) == {}
    assert accepted_kwargs(torch.nn.DataParallel(rrdb), kwargs) == {}
    assert set(accepted_kwargs(FeedbackUNet(num_feat=4, num_iter=1), kwargs)) == {'maps', 'return_all', 'guidance'}

    class AnyKwargs(torch.nn.Module):
        def forward(self, x, **kw):
            return x

    assert accepted_kwargs(AnyKwargs(), kwargs) == kwargs


def test_a_linear_output_generator_is_refused_in_the_cycle(tmp_path):
    from basicsr.models import build_model

    ldr, hdr = make_unpaired_folders(tmp_path / 'data', n_ldr=2, n_hdr=2, size=(36, 40))
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), phase='train')
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False, root_path=str(tmp_path))
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))  # fmt: skip
    opt['network_g'] = {'type': 'ExpandNet', 'num_feat': 4, 'global_size': 32}
    with pytest.raises(ValueError, match=r"network_g \(ExpandNet\) has out_domain 'linear'.*PairedHDRModel"):
        build_model(copy.deepcopy(opt))


def _run(tmp_path: Path, option_file: str, data: dict) -> Path:
    opt = yaml.safe_load((REPO / 'options' / option_file).read_text())
    force = [f'datasets:{phase}:{key}={value}' for (phase, key), value in data.items()]
    assert_ok(run_python([str(BASICSR_TRAIN), '-opt', str(REPO / 'options' / option_file), '--force_yml', *force],
                         cwd=tmp_path))  # fmt: skip
    return tmp_path / 'experiments' / opt['name']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from llmhdr_basicsr.utils.hdr_io import read_hdr, write_hdr, write_ldr
    from llmhdr_basicsr.utils.tonemap import srgb_encode_np

    root = tmp_path_factory.mktemp('basicsr_archs')
    ldr, hdr = make_unpaired_folders(root / 'data', n_ldr=2, n_hdr=2, size=(136, 144))  # VGGStyleDiscriminator: 128
    for p in sorted(hdr.iterdir()):
        gt = read_hdr(p)
        write_hdr(root / 'paired' / 'gt' / p.name, gt)
        write_ldr(root / 'paired' / 'lq' / f'{p.stem}.png', srgb_encode_np(gt / gt.max() * 4))
    return root, ldr, hdr, root / 'paired'


def _check_checkpoint_drives_llmhdr_infer(exp: Path, lq: Path, out: Path) -> None:
    from llmhdr_basicsr import infer
    from llmhdr_basicsr.utils.hdr_io import read_hdr

    weights = exp / 'models' / 'net_g_latest.pth'
    ckpt = torch.load(weights, map_location='cpu', weights_only=True)
    assert ckpt['arch']['type'] == 'RRDBNet' and ckpt['arch']['headroom'] == 4.0  # the model's HDR domain
    assert infer.main(['-i', str(lq), '-o', str(out), '--weights', str(weights), '--quiet']) == 0
    outputs = sorted(out.glob('*.exr'))
    assert len(outputs) == len(list(lq.iterdir()))
    for p in outputs:
        img = read_hdr(p)
        assert np.isfinite(img).all() and 0 < img.max() <= 16.0 + 1e-3  # mu-law domain of headroom 4: up to 16x


def test_rrdbnet_generators_and_basicsr_discriminators_train_in_the_cycle(data, tmp_path):
    root, ldr, hdr, paired = data
    exp = _run(tmp_path, 'basicsr_cycle_smoke.yml', {
        ('train', 'dataroot_ldr'): ldr, ('train', 'dataroot_hdr'): hdr,
        ('val', 'dataroot_lq'): paired / 'lq', ('val', 'dataroot_gt'): paired / 'gt'})  # fmt: skip
    for net in ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr'):
        assert (exp / 'models' / f'net_{net}_latest.pth').is_file()
    log = next(exp.glob('train_*.log')).read_text()
    assert 'VGGStyleDiscriminator' in log and 'UNetDiscriminatorSN' in log and 'l_g_cycle_hdr' in log
    assert '# pu21_psnr:' in log
    assert len(list((exp / 'visualization').rglob('*.exr'))) >= 2  # float HDR validation images
    _check_checkpoint_drives_llmhdr_infer(exp, paired / 'lq', tmp_path / 'infer')


def test_rrdbnet_trains_supervised_with_paired_hdr_model(data, tmp_path):
    root, ldr, hdr, paired = data
    pairs = {'dataroot_lq': paired / 'lq', 'dataroot_gt': paired / 'gt'}
    exp = _run(tmp_path, 'paired_rrdbnet_smoke.yml', {(phase, k): v for phase in ('train', 'val')
                                                      for k, v in pairs.items()})  # fmt: skip
    log = next(exp.glob('train_*.log')).read_text()
    assert 'PairedHDRModel' in log and 'l_pix' in log and '# psnr_mu:' in log
    _check_checkpoint_drives_llmhdr_infer(exp, paired / 'lq', tmp_path / 'infer')
