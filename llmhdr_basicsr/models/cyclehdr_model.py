"""CycleHDRModel: the cycle-consistent, unpaired LDR<->HDR model of LLM-HDR / CycleHDR (arXiv 2410.15068).

Notation of the paper (method.md §1): x = LDR, y = HDR; G_Y: LDR->HDR, G_X: HDR->LDR; D_Y judges HDR, D_X judges LDR.

================  ======================  ==============================================================
paper             YAML key                role
================  ======================  ==============================================================
G_Y               ``network_g``           LDR->HDR (``net_g_*.pth``; ``pretrain_network_g`` and inference
                                          stay BasicSR-standard)
G_X               ``network_g_hdr2ldr``   HDR->LDR, also the tone-mapping operator of the paper's Table 2
D_Y               ``network_d_hdr``       PatchGAN on HDR (in mu-law space)
D_X               ``network_d_ldr``       PatchGAN on LDR
================  ======================  ==============================================================

Domains inside the model (method.md §5): LDR tensors are display-referred sRGB in [0, 1]; HDR tensors are the
**mu-law-compressed** (mu = 5000) per-image-normalised linear HDR in [0, 1] ("T-space"): ``T(H / 2^headroom)``, with
diffuse white (the datasets' normalisation reference, ~ the LDR clipping level) ``headroom`` stops below the top of
the range (``network_g.headroom``, 4 in the option files). The datasets deliver linear normalised HDR;
:meth:`feed_data` compresses it. Generators output T-space HDR, discriminators see T-space HDR, and
the HDR cycle / identity terms are L1 in T-space (the "tone-mapped domain"). Linear HDR comes back only when results
are written (``mu_law_inverse``).

Objectives (each an optional ``train.<name>_opt`` block with ``type`` and ``loss_weight``; a missing block, or
``loss_weight: 0``, switches a term off):

1. adversarial ``gan_opt`` (BasicSR's ``GANLoss``, LSGAN by default) with image pools of ``train.pool_size`` (50);
2. cycle ``cycle_opt``: |G_X(G_Y(x)) - x| + |G_Y(G_X(T(y))) - T(y)| (L1; BasicSR's ``L1Loss``);
3. identity ``identity_opt``: |G_Y(T(y)) - T(y)| + |G_X(x) - x|;
4. perception ``llm_opt`` (:class:`~llmhdr_basicsr.losses.perception_loss.LLMPerceptionLoss`): soft artifact /
   over- / under-exposure fractions of both outputs;
5. contrastive ``clip_opt`` (``CLIPContrastiveLoss``): CLIP InfoNCE between hist-equalised inputs and outputs;
6. semantic ``sam_opt`` (``SAMSemanticLoss``): SAM segment agreement between the same pairs;
7. virtual-camera cycle ``camera_opt`` (an addition of this project, not in the paper; method.md §7): the HDR cycle
   with G_X replaced by a known random camera, |G_Y(c(y)) - T(e y)|, where c photographs the HDR crop y with a random
   CRF and exposure e (``UnpairedLDRHDRDataset`` option ``virtual_camera``). It uses only the HDR set, so training
   stays unpaired, and it teaches G_Y to invert camera curves, which the adversarial terms alone did not learn in the
   quality benchmark's budget (benchmarks/README.md). Off when the block or the dataset option is missing. With a
   learned camera curve (``network_g.crf_basis``) and ``train.curve_from_camera`` (default true) only this term
   trains G_Y's curve mixture; every other term still trains the rest of G_Y.

Training step (CycleGAN order, ``pytorch-CycleGAN-and-pix2pix`` ``optimize_parameters``): generators first with both
discriminators frozen, then both discriminators on real vs pooled fakes, each D loss halved.

New functions: ``feed_data``, ``optimize_parameters``, ``test``, ``nondist_validation``, ``dist_validation``,
``get_current_visuals``, ``save``. Overridden for CPU / safety: ``model_to_device`` (DDP without CUDA device ids),
``setup_optimizers``/``setup_schedulers`` (AdamW, LinearDecayLR), ``save_network`` / ``save_training_state``
(atomic, raise on failure). Inherited from BaseModel: ``load_network``, ``resume_training``,
``update_learning_rate``, ``reduce_loss_dict``, ``model_ema``, metric bookkeeping.
"""

from __future__ import annotations

import contextlib
import os.path as osp
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DataParallel, DistributedDataParallel
from tqdm import tqdm

from llmhdr_basicsr.models.image_pool import ImagePool
from llmhdr_basicsr.models.lr_scheduler import build_scheduler
from llmhdr_basicsr.perception.heuristic import heuristic_maps
from llmhdr_basicsr.utils import rng_state
from llmhdr_basicsr.utils.checkpoint_arch import network_opt_from_checkpoint
from llmhdr_basicsr.utils.fileio import atomic_write
from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr
from llmhdr_basicsr.utils.ldr_view import LDRGlobalView
from llmhdr_basicsr.utils.options import check_keys
from llmhdr_basicsr.utils.tile_option import parse_tile_option
from llmhdr_basicsr.utils.tiling import GlobalStatsTiler
from llmhdr_basicsr.utils.tonemap import hdr_to_model, model_to_hdr, tonemap_preview
from llmhdr_basicsr.version import __version__

NETWORKS = ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr')
LOSS_BLOCKS = ('gan_opt', 'cycle_opt', 'identity_opt', 'llm_opt', 'clip_opt', 'sam_opt', 'camera_opt')
TRAIN_KEYS = (
    *(f'{b}' for b in LOSS_BLOCKS),
    'optim_g', 'optim_d', 'scheduler', 'total_iter', 'warmup_iter', 'ema_decay', 'pool_size', 'net_d_iters',
    'net_d_init_iters', 'deep_supervision', 'amp', 'channels_last', 'curve_from_camera',
)  # fmt: skip
VAL_KEYS = ('val_freq', 'save_img', 'suffix', 'pbar', 'metrics', 'output_ext', 'preview', 'preview_stops',
            'tb_images', 'clip_guidance', 'tile')  # fmt: skip


def _unwrap(output):
    """Generators may return a list of per-iteration outputs (deep supervision): the last one is the result."""
    return output[-1] if isinstance(output, list | tuple) else output


@MODEL_REGISTRY.register()
class CycleHDRModel(BaseModel):
    """Unpaired LDR<->HDR translation with two feedback U-Nets and two PatchGANs (see the module docstring).

    Training batches: ``{'ldr': (N, 3, h, w) display-referred [0, 1], 'hdr': (N, 3, h, w) linear normalised HDR,
    optional 'ldr_maps': (N, 3, h, w) cached perception maps + 'ldr_maps_valid': (N,)}``.
    Validation/test batches: ``{'lq': LDR [, 'gt': linear HDR], 'lq_path'}`` (LDR->HDR) or ``{'hdr': linear HDR,
    'hdr_path'}`` (HDR->LDR, tone mapping).
    """

    def __init__(self, opt: dict):
        super().__init__(opt)
        if opt.get('val'):  # training and test.py alike: a misspelt key (e.g. 'tiles') is reported, not ignored
            check_keys(opt['val'], VAL_KEYS, 'val')
        self.val_tile = parse_tile_option((opt.get('val') or {}).get('tile'), 'val.tile')  # checked before any build
        self.net_g = self._build('g')
        self.net_g_hdr2ldr = self._build('g_hdr2ldr') if 'network_g_hdr2ldr' in opt else None
        self.headroom = float(getattr(self.get_bare_model(self.net_g), 'headroom', 0.0))
        self.net_d_hdr = self.net_d_ldr = None
        self.guidance_encoder = None
        if self.is_train:
            check_keys(opt['train'], TRAIN_KEYS, 'train')
            for name in ('g_hdr2ldr', 'd_hdr', 'd_ldr'):
                if f'network_{name}' not in opt:
                    raise KeyError(f'CycleHDRModel training needs the option block network_{name}')
            self.net_g_hdr2ldr = self.net_g_hdr2ldr or self._build('g_hdr2ldr')
            if float(getattr(self.get_bare_model(self.net_g_hdr2ldr), 'headroom', 0.0)) != self.headroom:
                raise ValueError('network_g and network_g_hdr2ldr must use the same headroom (their HDR domain)')
            self.net_d_hdr = self._build('d_hdr')
            self.net_d_ldr = self._build('d_ldr')
            self.init_training_settings()
        elif (self.opt.get('val') or {}).get('clip_guidance'):
            self._setup_guidance(build_loss(self.opt['val']['clip_guidance']).to(self.device), 'val.clip_guidance')
        else:
            self._setup_guidance(None, 'val.clip_guidance')

    # ------------------------------------------------------------------------------------------------ construction
    def _build(self, name: str):
        key = f'network_{name}'
        self.opt[key] = network_opt_from_checkpoint(self.opt, name)  # completed from the checkpoint's 'arch' entry
        try:
            net = build_network(self.opt[key])
        except TypeError as err:  # unknown / misspelt constructor option
            raise TypeError(f'{key} ({self.opt[key].get("type")}): {err}') from err
        net = self.model_to_device(net)
        self.print_network(net)
        path = self.opt['path'].get(f'pretrain_network_{name}')
        if path is not None:
            param_key = self.opt['path'].get(f'param_key_{name}', 'params')
            self.load_network(net, path, self.opt['path'].get(f'strict_load_{name}', True), param_key)
        return net

    def model_to_device(self, net):
        """Move to ``self.device``; wrap in DDP (CUDA device ids only when on CUDA, so gloo/CPU works) or DP."""
        net = net.to(self.device)
        if self.opt.get('train', {}).get('channels_last') and self.device.type == 'cuda':
            net = net.to(memory_format=torch.channels_last)
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False)
            )
        elif self.opt['num_gpu'] > 1:
            net = DataParallel(net)
        return net

    def init_training_settings(self):
        train_opt = self.opt['train']
        logger = get_root_logger()
        for net in (self.net_g, self.net_g_hdr2ldr, self.net_d_hdr, self.net_d_ldr):
            net.train()

        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            self.net_g_ema = self.model_to_device(build_network(self.opt['network_g']))
            path = self.opt['path'].get('pretrain_network_g')
            if path is not None:
                self.load_network(self.net_g_ema, path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()

        self.losses = {}
        for block in LOSS_BLOCKS:
            cri = None
            if train_opt.get(block) and train_opt[block].get('loss_weight', 1) != 0:
                try:
                    cri = build_loss(train_opt[block]).to(self.device)
                except TypeError as err:
                    raise TypeError(f'train.{block} ({train_opt[block].get("type")}): {err}') from err
                if not getattr(cri, 'enabled', True):  # CLIP/SAM with allow_missing and no checkpoint: it warned
                    cri = None
            self.losses[block] = cri
        self.cri_gan = self.losses['gan_opt']
        self._setup_guidance(self.losses['clip_opt'], 'train.clip_opt')
        if self.cri_gan is None:
            logger.warning('train.gan_opt is missing: training without the adversarial term.')
        self.pool_hdr = ImagePool(train_opt.get('pool_size', 50))
        self.pool_ldr = ImagePool(train_opt.get('pool_size', 50))
        self.net_d_iters = train_opt.get('net_d_iters', 1)
        self.net_d_init_iters = train_opt.get('net_d_init_iters', 0)
        self.deep_supervision = bool(train_opt.get('deep_supervision', False))
        self._camera_warned = False
        self.curve_from_camera = bool(
            train_opt.get('curve_from_camera', True)
            and self.losses['camera_opt'] is not None
            and getattr(self.get_bare_model(self.net_g), 'crf', None) is not None
        )
        self._setup_amp(train_opt.get('amp'))
        self.setup_optimizers()
        self.setup_schedulers()

    def _setup_guidance(self, clip_loss, where: str):
        """CLIP guidance of the generators (method.md §2.3): concat(E(input), E(previous output)) feeds FiLM.

        Only for generators built with ``guidance_dim > 0``; the encoder is the frozen CLIP of the contrastive loss
        (``train.clip_opt`` when training, ``val.clip_guidance`` — the same kind of block — for testing). Guidance
        embeddings are computed without gradient: they condition the decoder, the contrastive loss trains it.
        """
        wanted = [n for n in ('g', 'g_hdr2ldr') if self._guidance_dim(n)]
        if not wanted:
            return
        if clip_loss is None:
            raise ValueError(
                f'network_{wanted[0]}.guidance_dim > 0 needs a CLIP encoder: set {where} (type CLIPContrastiveLoss) '
                'with a local checkpoint, or set guidance_dim: 0'
            )
        for name in wanted:
            if self._guidance_dim(name) != 2 * clip_loss.embed_dim:
                raise ValueError(
                    f'network_{name}.guidance_dim must be 2 x the CLIP embedding size = {2 * clip_loss.embed_dim}'
                )
        self.guidance_encoder = clip_loss

    def _guidance_dim(self, name: str) -> int:
        net = getattr(self, f'net_{name}', None)
        return 0 if net is None else getattr(self.get_bare_model(net), 'guidance_dim', 0)

    def _guidance(self, net, x: torch.Tensor):
        """The generator's guidance callable ``guidance(prev) -> (N, 2 D)`` built from its input, or None when the
        generator takes no guidance (or there is no encoder)."""
        enc = self.guidance_encoder
        if enc is None or not getattr(self.get_bare_model(net), 'guidance_dim', 0):
            return None
        with torch.no_grad():
            e_in = enc.embed(x).detach()

        def guidance(prev):
            with torch.no_grad():
                e_out = e_in if prev is None else enc.embed(prev).detach()
            return torch.cat([e_in, e_out], dim=1)

        return guidance

    def _run(self, net, x: torch.Tensor, **kwargs):
        """Call a generator, with CLIP guidance built from its input when the generator takes guidance."""
        if getattr(self, 'curve_from_camera', False) and net is self.net_g:
            kwargs.setdefault('detach_curve', True)  # G_Y's camera curve learns from the camera cycle only
        guidance = self._guidance(net, x)
        if guidance is None:
            return net(x, **kwargs)
        return net(x, guidance=guidance, **kwargs)

    def _setup_amp(self, amp):
        self.amp_dtype = None
        if amp in (None, False, 'none', 'fp32'):
            return
        if amp not in ('bf16', 'fp16'):
            raise ValueError(f'train.amp must be one of bf16, fp16, none; got {amp!r}')
        if self.device.type != 'cuda':
            get_root_logger().warning(f'train.amp={amp} needs a GPU; training in fp32 on {self.device}.')
            return
        self.amp_dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
        self.scaler = torch.amp.GradScaler('cuda', enabled=amp == 'fp16')

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type='cuda', dtype=self.amp_dtype)

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        optimizers = {'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}
        if optim_type not in optimizers:
            raise ValueError(f'optimizer type {optim_type!r} is not supported; choose one of {sorted(optimizers)}')
        return optimizers[optim_type](params, lr, **kwargs)

    def setup_optimizers(self):
        """One optimizer for both generators and one for both discriminators (CycleGAN's itertools.chain)."""
        train_opt = self.opt['train']
        g_params = [p for n in (self.net_g, self.net_g_hdr2ldr) for p in n.parameters() if p.requires_grad]
        d_params = [p for n in (self.net_d_hdr, self.net_d_ldr) for p in n.parameters() if p.requires_grad]
        for key, params in (('optim_g', g_params), ('optim_d', d_params)):
            optim_opt = dict(train_opt[key])
            optim_type = optim_opt.pop('type')
            optimizer = self.get_optimizer(optim_type, params, **optim_opt)
            setattr(self, key.replace('optim', 'optimizer'), optimizer)
            self.optimizers.append(optimizer)

    def setup_schedulers(self):
        sched_opt = self.opt['train'].get('scheduler')
        if sched_opt:
            self.schedulers = [build_scheduler(o, sched_opt) for o in self.optimizers]

    # ---------------------------------------------------------------------------------------------------- data
    def feed_data(self, data: dict):
        """Move a batch to the device; HDR is mu-law-compressed into T-space (see the module docstring)."""
        self.ldr_paths = data.get('ldr_path', data.get('lq_path'))
        self.ldr_keys = data.get('ldr_key')  # digests of the exact LDR pixels (unpaired dataset)
        # Whole-image LDR side (ldr_global/ldr_image_key/ldr_window) for the per-image CLIP/SAM caches (issue 5);
        # None for batches without it: the losses then use the LDR crop. Stays on the CPU: the losses move misses only.
        self.ldr_global_view = LDRGlobalView.from_batch(data)
        self.real_ldr = self.real_hdr = self.gt = self.ldr_prior = self.cam_ldr = self.cam_target = None
        if 'ldr' in data:  # unpaired training batch
            self.real_ldr = data['ldr'].to(self.device)
            self.real_hdr = self.to_model_hdr(data['hdr'].to(self.device))
            if 'cam_ldr' in data:  # virtual-camera photo of the HDR crop; target = the scene with its clip level at 1
                self.cam_ldr = data['cam_ldr'].to(self.device)
                exposure = data['cam_exposure'].to(self.device).float().view(-1, 1, 1, 1)
                self.cam_target = self.to_model_hdr(data['hdr'].to(self.device) * exposure)
            if 'ldr_maps' in data:
                valid = data.get('ldr_maps_valid', torch.ones(len(self.real_ldr)))
                self.ldr_prior = (data['ldr_maps'].to(self.device), valid.to(self.device).float().view(-1, 1, 1, 1))
        else:
            if 'lq' in data:
                self.real_ldr = data['lq'].to(self.device)
            if 'hdr' in data:
                self.real_hdr = self.to_model_hdr(data['hdr'].to(self.device))
            if 'gt' in data:
                self.gt = data['gt'].to(self.device)  # linear HDR, for metrics
        if self.opt.get('train', {}).get('channels_last') and self.device.type == 'cuda':
            if self.real_ldr is not None:
                self.real_ldr = self.real_ldr.contiguous(memory_format=torch.channels_last)

    def to_model_hdr(self, linear: torch.Tensor) -> torch.Tensor:
        """Linear HDR (diffuse white ~ 1, as the datasets normalise it) -> the model's domain
        ``T(min(H / 2^headroom, 1))`` in [0, 1] (mu-law, mu = 5000; values beyond the headroom clip)."""
        return hdr_to_model(linear, self.headroom)

    def to_linear(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_hdr`: model-domain HDR in [0, 1] -> linear HDR, white ~ 1, up to 2^headroom."""
        return model_to_hdr(t, self.headroom)

    def _gating_maps(self):
        """Iteration-0 gating maps of G_Y: cached VLM maps where valid, the heuristic elsewhere (or None)."""
        if self.ldr_prior is None:
            return None
        cached, valid = self.ldr_prior
        if bool((valid > 0).all()):
            return cached
        return valid * cached + (1 - valid) * heuristic_maps(self.real_ldr).stack().detach()

    # ------------------------------------------------------------------------------------------------ training
    @staticmethod
    def _set_requires_grad(nets, flag: bool):
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(flag)

    def _adv(self, net_d, outputs):
        """Generator-side adversarial term on the final output, or averaged over iterations (deep supervision)."""
        outs = outputs if (self.deep_supervision and isinstance(outputs, list | tuple)) else [_unwrap(outputs)]
        return sum(self.cri_gan(net_d(o), True, is_disc=False) for o in outs) / len(outs)

    def optimize_parameters(self, current_iter: int):
        loss_dict = OrderedDict()
        cri = self.losses
        ldr, hdr = self.real_ldr, self.real_hdr
        step_g = current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters

        # ---- generators (D_Y, D_X frozen) -------------------------------------------------------------------
        self._set_requires_grad((self.net_d_hdr, self.net_d_ldr), False)
        self.optimizer_g.zero_grad(set_to_none=True)
        with self._autocast(), torch.set_grad_enabled(step_g):  # D warm-up iterations need the fakes only
            maps = self._gating_maps()
            fake_hdr_all = self._run(self.net_g, ldr, maps=maps, return_all=True)  # G_Y(x), every feedback iteration
            fake_ldr_all = self._run(self.net_g_hdr2ldr, hdr, return_all=True)  # G_X(y)
            fake_hdr, fake_ldr = _unwrap(fake_hdr_all), _unwrap(fake_ldr_all)
            l_total = 0
            if step_g:
                if self.cri_gan is not None:
                    loss_dict['l_g_gan_hdr'] = self._adv(self.net_d_hdr, fake_hdr_all)
                    loss_dict['l_g_gan_ldr'] = self._adv(self.net_d_ldr, fake_ldr_all)
                if cri['cycle_opt'] is not None:  # forward and backward cycles (Eq. cycle, method.md §6.2)
                    loss_dict['l_g_cycle_ldr'] = cri['cycle_opt'](self._run(self.net_g_hdr2ldr, fake_hdr), ldr)
                    loss_dict['l_g_cycle_hdr'] = cri['cycle_opt'](self._run(self.net_g, fake_ldr), hdr)
                if cri['identity_opt'] is not None:  # G_Y(T(y)) ~ T(y), G_X(x) ~ x (method.md §6.3)
                    loss_dict['l_g_identity_hdr'] = cri['identity_opt'](self._run(self.net_g, hdr), hdr)
                    loss_dict['l_g_identity_ldr'] = cri['identity_opt'](self._run(self.net_g_hdr2ldr, ldr), ldr)
                if cri['camera_opt'] is not None:  # virtual-camera cycle (item 7 above)
                    if self.cam_ldr is not None:
                        fake_cam = _unwrap(self._run(self.net_g, self.cam_ldr, detach_curve=False))
                        loss_dict['l_g_camera'] = cri['camera_opt'](fake_cam, self.cam_target)
                    elif not self._camera_warned:
                        self._camera_warned = True
                        get_root_logger().warning(
                            'train.camera_opt is set but the batches carry no cam_ldr: set virtual_camera: true in '
                            'the UnpairedLDRHDRDataset options; training goes on without the virtual-camera cycle.'
                        )
                if cri['llm_opt'] is not None:
                    prior = None if self.ldr_prior is None else self.ldr_prior[0] * self.ldr_prior[1]
                    loss_dict['l_g_llm_hdr'] = cri['llm_opt'](fake_hdr, self._base(ldr, 'g'), prior)
                    loss_dict['l_g_llm_ldr'] = cri['llm_opt'](fake_ldr, self._base(hdr, 'g_hdr2ldr'))
                keys = self._crop_keys()
                if cri['clip_opt'] is not None:  # E(h(x)) vs E(T(y_hat)); symmetric term on the HDR->LDR side
                    loss_dict['l_g_clip'] = cri['clip_opt'](fake_hdr, ldr, keys, global_view=self.ldr_global_view)
                if cri['sam_opt'] is not None:
                    loss_dict['l_g_sam'] = cri['sam_opt'](fake_hdr, ldr, keys, global_view=self.ldr_global_view)
                l_total = sum(loss_dict.values())
        if step_g:
            self._check_finite(loss_dict, current_iter)
            self._backward_step(l_total, self.optimizer_g)

        # ---- discriminators ----------------------------------------------------------------------------------
        if self.cri_gan is not None:
            self._set_requires_grad((self.net_d_hdr, self.net_d_ldr), True)
            self.optimizer_d.zero_grad(set_to_none=True)
            d_losses = OrderedDict()
            with self._autocast():
                for domain, net_d, real, fake, pool in (
                    ('hdr', self.net_d_hdr, hdr, fake_hdr, self.pool_hdr),
                    ('ldr', self.net_d_ldr, ldr, fake_ldr, self.pool_ldr),
                ):
                    out_real = net_d(real)
                    out_fake = net_d(pool.query(fake))
                    d_losses[f'l_d_{domain}_real'] = self.cri_gan(out_real, True, is_disc=True) * 0.5
                    d_losses[f'l_d_{domain}_fake'] = self.cri_gan(out_fake, False, is_disc=True) * 0.5
                    loss_dict[f'out_d_{domain}_real'] = out_real.detach().mean()
                    loss_dict[f'out_d_{domain}_fake'] = out_fake.detach().mean()
            self._check_finite(d_losses, current_iter)
            self._backward_step(sum(d_losses.values()), self.optimizer_d)
            loss_dict.update(d_losses)

        self.log_dict = self.reduce_loss_dict({k: v.detach() for k, v in loss_dict.items()})
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _backward_step(self, loss, optimizer):
        if self.amp_dtype is torch.float16:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    @staticmethod
    def _check_finite(losses: dict, current_iter: int):
        """A NaN/Inf loss stops training before the optimizer step, so the weights (and checkpoints) stay good."""
        for name, value in losses.items():
            if not torch.isfinite(value.detach()).all():
                raise FloatingPointError(
                    f'Non-finite loss {name} = {value.item()} at iteration {current_iter}; training stopped before '
                    'the optimizer step. The last saved checkpoint is intact: lower the learning rate or check the '
                    'data, then resume with --auto_resume.'
                )

    def _base(self, x, name):
        """The generator input mapped to its output domain (display encoding of the perception reference)."""
        from llmhdr_basicsr.archs.feedback_unet_arch import output_domain_base

        net = self.get_bare_model(self.net_g if name == 'g' else self.net_g_hdr2ldr)
        return output_domain_base(x, net.out_domain, net.headroom).detach()

    def _crop_keys(self):
        """Keys naming the exact LDR crops of the batch, for the CLIP/SAM caches in their ``ldr_view: crop`` mode (None:
        no caching); the per-image keys of the default mode travel in ``self.ldr_global_view``."""
        return None if self.ldr_keys is None else list(self.ldr_keys)

    # ------------------------------------------------------------------------------------------------ inference
    def test(self):
        """Inference on the current batch: ``self.output`` (T-space HDR from LDR, or LDR from HDR).

        With ``val.tile`` set, the generator runs tile by tile (:meth:`_infer`) and ``self.output`` is a CPU tensor.
        """
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        with torch.no_grad():
            if self.real_ldr is not None:
                net.eval()
                self.output = self._infer(net, self.real_ldr)
                self.direction = 'ldr2hdr'
            else:
                net = self.net_g_hdr2ldr
                if net is None:
                    raise KeyError('HDR inputs need network_g_hdr2ldr (the tone-mapping generator) in the options')
                net.eval()
                self.output = self._infer(net, self.real_hdr)
                self.direction = 'hdr2ldr'
            net.train(self.is_train)

    def _infer(self, net, x: torch.Tensor) -> torch.Tensor:
        """One generator (in eval mode) on a whole test image, untiled or as ``val.tile`` asks (issue 6).

        Tiled inference is the one of ``llmhdr-infer --tile``: :class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`
        records the instance-norm statistics and the CLIP guidance vectors once on a downscaled copy of the image
        (ExpandNet's global branch) and replays them in every tile, so tiles agree; one tile at a time is on the
        device and the blended result is assembled on the CPU. An image that fits in one tile gives exactly the
        untiled result; a larger one differs by what tiling.py's docstring and the README quantify.

        Args:
            net: G_Y (``network_g`` / its EMA) or G_X (``network_g_hdr2ldr``), possibly wrapped in (D)DP.
            x: ``(N, 3, H, W)`` float32 generator input in [0, 1]: display-referred sRGB LDR (G_Y) or T-space
                (mu-law) HDR (G_X).

        Returns:
            ``(N, 3, H, W)`` float32 output in [0, 1] (T-space HDR or display-referred LDR): on ``self.device``
            untiled, on the CPU tiled.
        """
        if self.val_tile is None:
            return _unwrap(self._run(net, x))
        tile = self.val_tile
        tiler = GlobalStatsTiler(self.get_bare_model(net), tile.size, tile.overlap, tile.global_size, self.device)
        return tiler(x, guidance=self._guidance(net, x))

    def get_current_visuals(self):
        """CPU tensors: ``lq`` (input), ``result`` (linear HDR, or display LDR for hdr2ldr), ``gt`` if present."""
        out = OrderedDict()
        if self.direction == 'ldr2hdr':
            out['lq'] = self.real_ldr.detach().cpu()
            out['result'] = self.to_linear(self.output.detach().float()).cpu()
        else:
            out['lq'] = self.to_linear(self.real_hdr.detach().float()).cpu()
            out['result'] = self.output.detach().float().cpu()
        if self.gt is not None:
            out['gt'] = self.gt.detach().cpu()
        return out

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if self.opt['rank'] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Metrics on float linear HDR, ``.exr``/``.hdr`` + tone-mapped preview PNG, previews to tensorboard."""
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        with_metrics = bool(metrics_opt)
        if with_metrics:
            if not hasattr(self, 'metric_results'):
                self.metric_results = {m: 0 for m in metrics_opt}
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {m: 0 for m in self.metric_results}
        ext = '.' + val_opt.get('output_ext', 'exr').lstrip('.')
        preview, stops = val_opt.get('preview', 'reinhard'), val_opt.get('preview_stops', 0.0)
        tb_images = val_opt.get('tb_images', 4)
        if self.val_tile is not None:
            tile = self.val_tile
            g = tile.size if tile.global_size is None else tile.global_size
            glob = 'the full image' if g <= 0 else f'a copy of at most {g} x {g} px'
            get_root_logger().info(
                f'{dataset_name}: tiled inference (val.tile): tile {tile.size} px, overlap {tile.overlap} px, '
                f'instance-norm statistics and guidance from {glob}'
            )
        n_scored = 0
        pbar = tqdm(total=len(dataloader), unit='image') if val_opt.get('pbar', False) else None
        for idx, val_data in enumerate(dataloader):
            path = val_data.get('lq_path', val_data.get('hdr_path'))[0]
            img_name = osp.splitext(osp.basename(path))[0]
            self.feed_data(val_data)
            self.test()
            visuals = self.get_current_visuals()
            result = visuals['result']
            if self.direction == 'ldr2hdr':
                shown = tonemap_preview(result, preview, stops)
            else:
                shown = result
            if save_img:
                stem = self._result_stem(img_name, dataset_name, current_iter)
                if self.direction == 'ldr2hdr':
                    write_hdr(stem + ext, result[0].permute(1, 2, 0).numpy())
                    write_ldr(stem + f'_{preview}.png', shown[0].permute(1, 2, 0).numpy())
                else:
                    write_ldr(stem + '.png', result[0].permute(1, 2, 0).numpy())
            if tb_logger is not None and idx < tb_images:
                tb_logger.add_image(f'{dataset_name}/{img_name}', shown[0].clamp(0, 1), current_iter)
            if with_metrics and 'gt' in visuals and self.direction == 'ldr2hdr':
                data = dict(img=result[0].permute(1, 2, 0).numpy(), img2=visuals['gt'][0].permute(1, 2, 0).numpy())
                for name, opt_ in metrics_opt.items():
                    self.metric_results[name] += float(calculate_metric(data, opt_))
                n_scored += 1
            self.gt = None
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar is not None:
            pbar.close()
        if with_metrics:
            if n_scored == 0:
                get_root_logger().warning(f'{dataset_name}: no ground truth, metrics skipped.')
                return
            for metric in self.metric_results:
                self.metric_results[metric] /= n_scored
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _result_stem(self, img_name, dataset_name, current_iter):
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}')

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        log_str = f'Validation {dataset_name}\n'
        for metric, value in self.metric_results.items():
            log_str += f'\t # {metric}: {value:.4f}'
            if hasattr(self, 'best_metric_results'):
                best = self.best_metric_results[dataset_name][metric]
                log_str += f'\tBest: {best["val"]:.4f} @ {best["iter"]} iter'
            log_str += '\n'
        get_root_logger().info(log_str)
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)

    # ---------------------------------------------------------------------------------------------- checkpoints
    def save(self, epoch, current_iter):
        """Networks first, then the training state: a ``.state`` file implies its networks are complete."""
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        for name in NETWORKS[1:]:
            net = getattr(self, f'net_{name}')
            if net is not None:
                self.save_network(net, f'net_{name}', current_iter)
        self.save_training_state(epoch, current_iter)

    @staticmethod
    def _atomic_save(obj, path: str):
        """torch.save through a temporary file and a rename: never a half-written checkpoint under ``path``."""
        atomic_write(path, lambda f: torch.save(obj, f), fsync=True)

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR layout ``{param_key: state_dict}`` in ``models/<net_label>_<iter|latest>.pth``, atomically."""
        label = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict((k.removeprefix('module.'), v.cpu()) for k, v in state.items())
        arch = self.opt.get(net_label.replace('net_', 'network_', 1))
        if arch is not None:  # lets llmhdr-infer rebuild the network without the option file
            kwargs = dict(arch)
            save_dict['arch'] = {'type': kwargs.pop('type'), 'kwargs': kwargs}
        save_dict['version'] = __version__
        self._atomic_save(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
        }
        if self.amp_dtype is torch.float16:
            state['scaler'] = self.scaler.state_dict()
        state.update(rng_state.training_state_extras(self))  # random state, data position, image pools: exact resume
        self._atomic_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        rng_state.restore_training_extras(self, resume_state)
        if 'scaler' in resume_state and self.amp_dtype is torch.float16:
            self.scaler.load_state_dict(resume_state['scaler'])
