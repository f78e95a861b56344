"""Validation at scale: every DDP rank validates its share of the set (2 CPU processes on gloo), and the
all-reduced metrics equal the ones of one process."""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_ok, run_python

METRICS = {
    'psnr_mu': {'type': 'calculate_psnr_mu', 'better': 'higher'},
    'pu21_psnr': {'type': 'calculate_pu21_psnr', 'better': 'higher'},
    'pu21_psnr_clip': {'type': 'calculate_pu21_psnr_clipped', 'better': 'higher'},
    'log2_ratio_clip': {'type': 'calculate_clipped_log_ratio', 'better': 'lower'},
}

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, yaml
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.models import build_model

    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    if world > 1:
        torch.distributed.init_process_group('gloo')
    opt = yaml.safe_load(open('opt.yml'))
    opt.update(dist=world > 1, rank=rank, world_size=world)
    opt['path']['visualization'] = os.path.join('vis', sys.argv[1])
    torch.manual_seed(0)
    model = build_model(opt)
    dataset_opt = dict(opt['datasets']['val'], phase='val')
    loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=world > 1, sampler=None)
    model.validation(loader, 1, None, True)
    if rank == 0:
        json.dump(model.metric_results, open(f'{sys.argv[1]}.json', 'w'))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    """
)


def _validation_set(root: Path, n: int = 3, size: tuple[int, int] = (40, 48)) -> tuple[Path, Path]:
    """``n`` LDR/HDR pairs (same stems) with clipped highlights in the LDR, for the clipped-region metrics too."""
    from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr

    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    (root / 'lq').mkdir(parents=True)
    (root / 'gt').mkdir(parents=True)
    for i in range(n):
        hdr = np.stack([yy, xx, 1 - yy], -1) * rng.uniform(0.2, 1.0, 3) + 0.01
        cy, cx = rng.integers(6, h - 6), rng.integers(6, w - 6)
        hdr[cy - 4 : cy + 4, cx - 4 : cx + 4] = rng.uniform(20, 200)
        write_hdr(root / 'gt' / f'img_{i}.hdr', hdr.astype(np.float32))
        write_ldr(root / 'lq' / f'img_{i}.png', np.clip(hdr ** (1 / 2.2), 0, 1))
    return root / 'lq', root / 'gt'


def _free_port() -> int:
    with socket.socket() as sock:  # a port that no earlier run of this session still holds
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_ddp_ranks_share_validation_and_all_reduce_metrics(tmp_path):
    """Three images on two ranks: an uneven share (2 + 1), the case a sum without counts would get wrong."""
    n_images = 3
    lq, gt = _validation_set(tmp_path / 'data', n=n_images)
    opt = {
        'name': 'dist_val', 'model_type': 'CycleHDRModel', 'num_gpu': 0, 'is_train': False, 'manual_seed': 0,
        'datasets': {'val': {'name': 'pairs', 'type': 'PairedLDRHDRDataset', 'dataroot_lq': str(lq),
                             'dataroot_gt': str(gt)}},
        'network_g': {'type': 'FeedbackUNet', 'num_feat': 4, 'num_iter': 2, 'out_domain': 'hdr_mu', 'headroom': 4},
        'path': {'pretrain_network_g': None},
        'val': {'save_img': True, 'suffix': 'dist', 'metrics': METRICS},
    }  # fmt: skip
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    (tmp_path / 'validate.py').write_text(SCRIPT)
    assert_ok(run_python(['validate.py', 'single'], cwd=tmp_path))
    port = str(_free_port())
    cmd = ['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}', 'validate.py', 'ddp']
    assert_ok(run_python(cmd, cwd=tmp_path))
    single = json.loads((tmp_path / 'single.json').read_text())
    ddp = json.loads((tmp_path / 'ddp.json').read_text())
    assert set(single) == set(METRICS) and all(np.isfinite(v) for v in single.values())
    assert ddp == pytest.approx(single, rel=1e-9, abs=1e-12)
    for run in ('single', 'ddp'):  # each rank wrote the files of its own images: all of them are there
        files = sorted(p.name for p in (tmp_path / 'vis' / run / 'pairs').glob('*.exr'))
        assert files == [f'img_{i}_dist.exr' for i in range(n_images)]
