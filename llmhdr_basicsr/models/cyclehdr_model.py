"""CycleHDRModel: the cycle-consistent, unpaired LDR<->HDR model of LLM-HDR / CycleHDR (arXiv 2410.15068).

Notation of the paper: x = LDR, y = HDR; G_Y: LDR->HDR, G_X: HDR->LDR; D_Y judges HDR, D_X judges LDR.

================  ======================  ==============================================================
paper             YAML key                role
================  ======================  ==============================================================
G_Y               ``network_g``           LDR->HDR (``net_g_*.pth``; ``pretrain_network_g`` and inference
                                          stay BasicSR-standard)
G_X               ``network_g_hdr2ldr``   HDR->LDR, also the tone-mapping operator of the paper's Table 2
D_Y               ``network_d_hdr``       PatchGAN on HDR (in mu-law space)
D_X               ``network_d_ldr``       PatchGAN on LDR
================  ======================  ==============================================================

Domains: LDR tensors are display-referred sRGB in [0, 1]; HDR tensors inside the model are the mu-law (mu = 5000)
domain ``T(H / 2^headroom)`` of linear HDR whose diffuse white is 1 (``network_g.headroom``, 4 in the option files).
Generators output that domain, discriminators see it, the HDR cycle / identity terms are L1 in it (the paper's
"tone-mapped domain"). Linear HDR comes back only for metrics and files (:meth:`to_linear`).

What "white" is: the LDR's clipping level. With the virtual camera on (dataset option ``virtual_camera``), every
HDR crop comes with the exposure ``e`` at which a random camera clips 2-16 % of its frame; ``train.hdr_white:
camera`` (the default then) exposes the real HDR of every term by that ``e``, so the discriminator's real samples,
G_X's inputs, the cycle and the camera target all agree with the LDR side on where white is (a fixed luminance
percentile, ``hdr_white: dataset``, put white where 0.5 % of the pixels exceed it while the camera target made
2-16 % clip). As a consequence G_X's starting point clips the real HDR like a camera, and the HDR cycle asks G_Y to
recover what it clipped.

Objectives (each an optional ``train.<name>_opt`` block with ``type`` and ``loss_weight``; a missing block, or
``loss_weight: 0``, switches a term off). :meth:`backward_g` builds them as one table of named terms:

=====================  ==================================================  =============================
term                   value                                               block
=====================  ==================================================  =============================
``l_g_gan_hdr/ldr``    LSGAN ``(D_Y(G_Y(x)) - 1)^2``, ``(D_X(G_X(y)) - 1)^2``  ``gan_opt``
``l_g_cycle_ldr/hdr``  ``|G_X(G_Y(x)) - x|``, ``|G_Y(G_X(y)) - y|``         ``cycle_opt``
``l_g_identity_*``     ``|G_Y(y) - y|``, ``|G_X(x) - x|``                   ``identity_opt``
``l_g_camera``         ``|G_Y(c(y)) - T(e y)|`` (virtual camera c)          ``camera_opt`` (project addition)
``l_g_llm_hdr/ldr``    perception: reconstruction vs LDR input; display     ``llm_opt``
``l_g_clip``           CLIP InfoNCE of hist-equalised input vs output       ``clip_opt``
``l_g_sam``            SAM segment agreement                                ``sam_opt``
=====================  ==================================================  =============================

The virtual-camera cycle uses only the HDR set (the photo ``c(y)`` is synthesised from the HDR crop), so training
stays unpaired; with a learned camera curve (``network_g.crf_basis``) and ``train.curve_from_camera`` (default true)
only this term trains G_Y's curve mixture (and the stops of ``network_g.highlight_expansion``). With
``train.deep_supervision`` every image term is averaged over the feedback iterations of the generator that produced
it (FHDR's deep supervision), not only the last output.

Training step (CycleGAN's ``optimize_parameters``): :meth:`forward` runs every generator pass once, then
:meth:`backward_g` with both discriminators frozen, then :meth:`backward_d` on real vs pooled fakes, each D loss
halved. Validation, HDR files and atomic checkpoints come from
:class:`~llmhdr_basicsr.models.hdr_base_model.HDRBaseModel`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from llmhdr_basicsr.archs.arch_util import accepted_kwargs
from llmhdr_basicsr.archs.feedback_unet_arch import output_domain_base
from llmhdr_basicsr.models.hdr_base_model import DEFAULT_HEADROOM, HDRBaseModel
from llmhdr_basicsr.models.image_pool import ImagePool
from llmhdr_basicsr.models.lr_scheduler import build_scheduler
from llmhdr_basicsr.perception.heuristic import heuristic_maps
from llmhdr_basicsr.perception.judge import VLMJudge, judged_maps, render_for_judge
from llmhdr_basicsr.utils.ldr_view import LDRGlobalView
from llmhdr_basicsr.utils.options import check_keys

NETWORKS = ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr')
LOSS_BLOCKS = ('gan_opt', 'cycle_opt', 'identity_opt', 'llm_opt', 'clip_opt', 'sam_opt', 'camera_opt')
TRAIN_KEYS = (
    *LOSS_BLOCKS,
    'optim_g', 'optim_d', 'scheduler', 'total_iter', 'warmup_iter', 'ema_decay', 'pool_size', 'net_d_iters',
    'net_d_init_iters', 'deep_supervision', 'amp', 'channels_last', 'curve_from_camera', 'hdr_white', 'headroom',
)  # fmt: skip
HDR_WHITE = ('camera', 'dataset')


@MODEL_REGISTRY.register()
class CycleHDRModel(HDRBaseModel):
    """Unpaired LDR<->HDR translation with two feedback U-Nets and two PatchGANs (see the module docstring).

    Training batches: ``{'ldr': (N, 3, h, w) display-referred [0, 1], 'hdr': (N, 3, h, w) linear normalised HDR,
    optional 'cam_ldr' + 'cam_exposure' (virtual camera), 'ldr_maps' + 'ldr_maps_valid' (cached perception maps)}``.
    Validation/test batches: ``{'lq': LDR [, 'gt': linear HDR], 'lq_path'}`` (LDR->HDR) or ``{'hdr': linear HDR,
    'hdr_path'}`` (HDR->LDR, tone mapping).
    """

    def __init__(self, opt: dict):
        super().__init__(opt)
        self.init_hdr_options()
        self.net_g = self.build_net('g')
        self.net_g_hdr2ldr = self.build_net('g_hdr2ldr') if 'network_g_hdr2ldr' in opt else None
        self.headroom = self.generator_headroom(self.net_g)
        self._check_output_domains()
        self.net_d_hdr = self.net_d_ldr = None
        self.guidance_encoder = None
        if self.is_train:
            check_keys(opt['train'], TRAIN_KEYS, 'train')
            for name in ('g_hdr2ldr', 'd_hdr', 'd_ldr'):
                if f'network_{name}' not in opt:
                    raise KeyError(f'CycleHDRModel training needs the option block network_{name}')
            self.net_g_hdr2ldr = self.net_g_hdr2ldr or self.build_net('g_hdr2ldr')
            self._check_output_domains()
            if self.generator_headroom(self.net_g_hdr2ldr) != self.headroom:
                raise ValueError('network_g and network_g_hdr2ldr must use the same headroom (their HDR domain)')
            self.net_d_hdr = self.build_net('d_hdr')
            self.net_d_ldr = self.build_net('d_ldr')
            self.init_training_settings()
        elif (self.opt.get('val') or {}).get('clip_guidance'):
            self._setup_guidance(build_loss(self.opt['val']['clip_guidance']).to(self.device), 'val.clip_guidance')
        else:
            self._setup_guidance(None, 'val.clip_guidance')

    # ------------------------------------------------------------------------------------------------ construction
    def generator_headroom(self, net) -> float:
        """The HDR domain of a generator: its ``headroom`` attribute, else ``train.headroom`` (default 4) for
        architectures without one (BasicSR's: they learn the model domain directly)."""
        default = (self.opt.get('train') or {}).get('headroom', DEFAULT_HEADROOM)
        return float(getattr(self.get_bare_model(net), 'headroom', default))

    def _check_output_domains(self) -> None:
        """G_Y must output the model's HDR domain and G_X display LDR (``out_domain``; architectures without the
        attribute are taken to output the domain they are trained into). Linear-output architectures (the peers,
        the classical operators) train with PairedHDRModel instead."""
        for name, wanted in (('g', 'hdr_mu'), ('g_hdr2ldr', 'ldr')):
            net = getattr(self, f'net_{name}', None)
            domain = None if net is None else getattr(self.get_bare_model(net), 'out_domain', wanted)
            if domain not in (None, wanted):
                raise ValueError(
                    f'network_{name} ({self.opt[f"network_{name}"]["type"]}) has out_domain {domain!r}; CycleHDRModel '
                    f'needs {wanted!r} there (train linear-output architectures with PairedHDRModel)'
                )

    def init_training_settings(self):
        train_opt = self.opt['train']
        for net in (self.net_g, self.net_g_hdr2ldr, self.net_d_hdr, self.net_d_ldr):
            net.train()

        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            self.net_g_ema = self.model_to_device(self.build_net_copy('g'))
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
        self._setup_judge()
        if self.cri_gan is None and 'gan_opt' not in train_opt:  # a weight of 0 (or null) switches it off knowingly
            get_root_logger().warning('train.gan_opt is missing: training without the adversarial term.')
        self.pool_hdr = ImagePool(train_opt.get('pool_size', 50))
        self.pool_ldr = ImagePool(train_opt.get('pool_size', 50))
        self.net_d_iters = train_opt.get('net_d_iters', 1)
        self.net_d_init_iters = train_opt.get('net_d_init_iters', 0)
        self.deep_supervision = bool(train_opt.get('deep_supervision', False))
        self.hdr_white = train_opt.get('hdr_white', 'camera')
        if self.hdr_white not in HDR_WHITE:
            raise ValueError(f'train.hdr_white must be one of {HDR_WHITE}, got {self.hdr_white!r}')
        self._camera_warned = False
        self.curve_from_camera = bool(
            train_opt.get('curve_from_camera', True)
            and self.losses['camera_opt'] is not None
            and any(getattr(self.get_bare_model(self.net_g), name, None) is not None for name in ('crf', 'expansion'))
        )
        self.setup_amp(train_opt.get('amp'))
        self.setup_optimizers()
        self.setup_schedulers()

    def build_net_copy(self, name: str):
        """A second, unwrapped instance of ``network_<name>`` (the EMA generator)."""
        from basicsr.archs import build_network

        return build_network(self.opt[f'network_{name}'])

    def _setup_guidance(self, clip_loss, where: str):
        """CLIP guidance of the generators: concat(E(input), E(previous output)) feeds FiLM.

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

    def _guidance(self, net, x: torch.Tensor) -> Callable | None:
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
        """Move a batch to the device; HDR goes into the model's mu-law domain (see the module docstring)."""
        self.ldr_paths = data.get('ldr_path', data.get('lq_path'))
        self.ldr_keys = data.get('ldr_key')  # digests of the exact LDR pixels (unpaired dataset)
        # Whole-image LDR side (ldr_global/ldr_image_key/ldr_window) for the per-image CLIP/SAM caches; None for
        # batches without it (the losses then use the LDR crop). Stays on the CPU: the losses move misses only.
        self.ldr_global_view = LDRGlobalView.from_batch(data)
        self.real_ldr = self.real_hdr = self.gt = self.ldr_prior = self.cam_ldr = self.cam_target = None
        if 'ldr' in data:  # unpaired training batch
            self.real_ldr = data['ldr'].to(self.device)
            hdr = data['hdr'].to(self.device)
            if 'cam_ldr' in data:  # virtual-camera photo of the HDR crop; target = the scene with its clip level at 1
                self.cam_ldr = data['cam_ldr'].to(self.device)
                exposure = data['cam_exposure'].to(self.device).float().view(-1, 1, 1, 1)
                self.cam_target = self.to_model_hdr(hdr * exposure)
            white_from_camera = self.cam_target is not None and getattr(self, 'hdr_white', 'camera') == 'camera'
            self.real_hdr = self.cam_target if white_from_camera else self.to_model_hdr(hdr)
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
        for key in ('real_ldr', 'real_hdr', 'cam_ldr', 'cam_target'):  # train.channels_last: the forward's inputs
            setattr(self, key, self.to_memory_format(getattr(self, key)))

    def _gating_maps(self):
        """Iteration-0 gating maps of G_Y: cached VLM maps where valid, the heuristic elsewhere (or None)."""
        if self.ldr_prior is None:
            return None
        cached, valid = self.ldr_prior
        if bool((valid > 0).all()):
            return cached
        return valid * cached + (1 - valid) * heuristic_maps(self.real_ldr).stack().detach()

    # ------------------------------------------------------------------------------------------------ training
    def _run(self, net, x: torch.Tensor, **kwargs) -> list[torch.Tensor]:
        """One generator pass with CLIP guidance when the generator takes it; every feedback iteration's output."""
        if getattr(self, 'curve_from_camera', False) and net is self.net_g:
            kwargs.setdefault('detach_curve', True)  # G_Y's camera curve learns from the camera cycle only
        guidance = self._guidance(net, x)
        if guidance is not None:
            kwargs['guidance'] = guidance
        out = net(x, **accepted_kwargs(net, {'return_all': True, **kwargs}))  # BasicSR archs: the input only
        return list(out) if isinstance(out, list | tuple) else [out]

    def forward(self) -> None:
        """All generator passes of one step (CycleGAN's ``forward``); each result is the list of the generator's
        feedback iterations, the last being the output."""
        cri = self.losses
        x, y = self.real_ldr, self.real_hdr
        self.fake_hdr = self._run(self.net_g, x, maps=self._gating_maps())  # G_Y(x)
        self.fake_ldr = self._run(self.net_g_hdr2ldr, y)  # G_X(y)
        self.rec_ldr = self.rec_hdr = self.idt_hdr = self.idt_ldr = self.fake_cam = None
        if cri['cycle_opt'] is not None:  # forward and backward cycles
            self.rec_ldr = self._run(self.net_g_hdr2ldr, self.fake_hdr[-1])  # G_X(G_Y(x))
            self.rec_hdr = self._run(self.net_g, self.fake_ldr[-1])  # G_Y(G_X(y))
        if cri['identity_opt'] is not None:
            self.idt_hdr = self._run(self.net_g, y)  # G_Y(y)
            self.idt_ldr = self._run(self.net_g_hdr2ldr, x)  # G_X(x)
        if cri['camera_opt'] is not None and self.cam_ldr is not None:  # virtual camera: G_Y(c(y))
            self.fake_cam = self._run(self.net_g, self.cam_ldr, detach_curve=False)

    def _each(self, term: Callable[[torch.Tensor], torch.Tensor], outputs: list[torch.Tensor]) -> torch.Tensor:
        """``term`` of the last output, or its mean over every feedback iteration with ``deep_supervision``."""
        outs = outputs if self.deep_supervision else outputs[-1:]
        return sum(term(o) for o in outs) / len(outs)

    def generator_terms(self) -> OrderedDict:
        """The table of named generator terms of this step (each loss module applies its ``loss_weight``)."""
        cri, terms = self.losses, OrderedDict()
        x, y = self.real_ldr, self.real_hdr
        if self.cri_gan is not None:
            terms['l_g_gan_hdr'] = self._each(lambda o: self.cri_gan(self.net_d_hdr(o), True, is_disc=False),
                                              self.fake_hdr)  # fmt: skip
            terms['l_g_gan_ldr'] = self._each(lambda o: self.cri_gan(self.net_d_ldr(o), True, is_disc=False),
                                              self.fake_ldr)  # fmt: skip
        if self.rec_ldr is not None:
            terms['l_g_cycle_ldr'] = self._each(lambda o: cri['cycle_opt'](o, x), self.rec_ldr)
            terms['l_g_cycle_hdr'] = self._each(lambda o: cri['cycle_opt'](o, y), self.rec_hdr)
        if self.idt_hdr is not None:
            terms['l_g_identity_hdr'] = self._each(lambda o: cri['identity_opt'](o, y), self.idt_hdr)
            terms['l_g_identity_ldr'] = self._each(lambda o: cri['identity_opt'](o, x), self.idt_ldr)
        if self.fake_cam is not None:
            terms['l_g_camera'] = self._each(lambda o: cri['camera_opt'](o, self.cam_target), self.fake_cam)
        elif cri['camera_opt'] is not None and not self._camera_warned:
            self._camera_warned = True
            get_root_logger().warning(
                'train.camera_opt is set but the batches carry no cam_ldr: set virtual_camera: true in the '
                'UnpairedLDRHDRDataset options; training goes on without the virtual-camera cycle.'
            )
        if cri['llm_opt'] is not None:  # reconstruction judged against its LDR input; G_X's output as a display image
            prior = self._perception_prior()
            ref_ldr = output_domain_base(y, 'ldr', self.headroom).detach()  # G_X's input rendered as LDR
            terms['l_g_llm_hdr'] = self._each(lambda o: cri['llm_opt'](o, None, prior, self.to_linear(o), x),
                                              self.fake_hdr)  # fmt: skip
            terms['l_g_llm_ldr'] = self._each(lambda o: cri['llm_opt'](o, ref_ldr), self.fake_ldr)
        keys = None if self.ldr_keys is None else list(self.ldr_keys)  # exact-crop cache keys (ldr_view: crop)
        if cri['clip_opt'] is not None:  # E(h(x)) vs E(T(y_hat))
            terms['l_g_clip'] = cri['clip_opt'](self.fake_hdr[-1], x, keys, global_view=self.ldr_global_view)
        if cri['sam_opt'] is not None:
            terms['l_g_sam'] = cri['sam_opt'](self.fake_hdr[-1], x, keys, global_view=self.ldr_global_view)
        return terms

    def backward_g(self, current_iter: int) -> OrderedDict:
        """Generator step on :meth:`generator_terms` (both discriminators frozen); returns the terms."""
        with self.autocast():
            terms = self.generator_terms()
        self.step(terms, self.optimizer_g, current_iter)
        return terms

    def backward_d(self, current_iter: int) -> OrderedDict:
        """Both discriminators on real vs pooled fake samples, each LSGAN loss halved; returns losses and outputs."""
        self.set_requires_grad((self.net_d_hdr, self.net_d_ldr), True)
        self.optimizer_d.zero_grad(set_to_none=True)
        losses, outputs = OrderedDict(), OrderedDict()
        with self.autocast():
            for domain, net_d, real, fake, pool in (
                ('hdr', self.net_d_hdr, self.real_hdr, self.fake_hdr[-1], self.pool_hdr),
                ('ldr', self.net_d_ldr, self.real_ldr, self.fake_ldr[-1], self.pool_ldr),
            ):
                out_real = net_d(real)
                out_fake = net_d(pool.query(fake.detach()))
                losses[f'l_d_{domain}_real'] = self.cri_gan(out_real, True, is_disc=True) * 0.5
                losses[f'l_d_{domain}_fake'] = self.cri_gan(out_fake, False, is_disc=True) * 0.5
                outputs[f'out_d_{domain}_real'] = out_real.detach().mean()
                outputs[f'out_d_{domain}_fake'] = out_fake.detach().mean()
        self.step(losses, self.optimizer_d, current_iter)
        return OrderedDict(**losses, **outputs)

    # ------------------------------------------------------------------------------------------------ VLM judge
    def _setup_judge(self) -> None:
        """The training-time VLM judge of ``train.llm_opt`` with ``backend: vlm`` (None otherwise)."""
        cri = self.losses.get('llm_opt')
        opt = getattr(cri, 'judge_opt', None)
        self.judge = None if opt is None else VLMJudge.from_options(opt)

    def _perception_prior(self) -> torch.Tensor | None:
        """Prior maps of the reconstruction's perception loss: the judge's latest answer about each image's own
        reconstruction where it has one, the cached VLM maps of the LDR input elsewhere (or None: the heuristic)."""
        cached = None if self.ldr_prior is None else self.ldr_prior[0] * self.ldr_prior[1]
        judge, view = getattr(self, 'judge', None), self.ldr_global_view
        if judge is None or view is None:
            return cached
        judged = judged_maps(judge.lookup(view.image_keys), view.windows, self.real_ldr.shape[-2:], self.device)
        if judged is None:
            return cached
        maps, valid = judged
        return maps if cached is None else valid * maps + (1 - valid) * cached

    def submit_to_judge(self, current_iter: int) -> None:
        """Every ``judge_every`` iterations: G_Y's reconstruction of the whole-image views of a few batch images,
        rendered and queued for the judge (never waits: a full queue drops)."""
        judge, view = getattr(self, 'judge', None), self.ldr_global_view
        if judge is None or view is None or not judge.due(current_iter):
            return
        picks = judge.wanted(list(dict.fromkeys(view.image_keys))[: judge.judge_images])  # distinct, with room
        if not picks:
            return
        index = [view.image_keys.index(k) for k in picks]
        with torch.no_grad():
            out = self._run(self.net_g, view.images[index].to(self.device))[-1]
        for key, image in zip(picks, render_for_judge(self.to_linear(out), judge.render, judge.render_stops)):
            judge.submit(key, image, current_iter)

    def judge_log(self) -> dict[str, float]:
        """``judge_*`` counters for the progress line and tensorboard (empty without a judge)."""
        judge = getattr(self, 'judge', None)
        if judge is None:
            return {}
        return {f'judge_{k}': float(v) for k, v in judge.stats().items() if k != 'images'}

    def tb_images(self) -> list[tuple[str, np.ndarray]]:
        """Tensorboard previews of the answers that arrived since the last call: ``(tag, (3, S, S) float [0, 1])``,
        the [artifact, over, under] maps as the R, G, B channels."""
        judge = getattr(self, 'judge', None)
        if judge is None:
            return []
        return [(f'judge/{key[:12]}', a.maps.astype(np.float32) / 255.0) for key, a in judge.take_fresh()]

    def optimize_parameters(self, current_iter: int):
        """CycleGAN's order: every generator pass, the generators' step with D_Y and D_X frozen, then the
        discriminators' step (``net_d_init_iters`` warm-up iterations and ``net_d_iters`` train D alone)."""
        step_g = current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters
        self.set_requires_grad((self.net_d_hdr, self.net_d_ldr), False)
        self.optimizer_g.zero_grad(set_to_none=True)
        log = OrderedDict()
        with self.autocast(), torch.set_grad_enabled(step_g):  # D warm-up iterations need the fakes only
            self.forward()
        if step_g:
            log.update(self.backward_g(current_iter))
        if self.cri_gan is not None:
            log.update(self.backward_d(current_iter))
        self.log_dict = self.reduce_loss_dict({k: v.detach() for k, v in log.items()})
        self.log_dict.update(self.amp_log())
        self.submit_to_judge(current_iter)
        self.log_dict.update(self.judge_log())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ------------------------------------------------------------------------------------------------ inference
    def test(self):
        """Inference on the current batch: ``self.output`` (model-domain HDR from LDR, or LDR from HDR).

        With ``val.tile`` set, the generator runs tile by tile (:meth:`infer`) and ``self.output`` is a CPU tensor.
        """
        if self.real_ldr is not None:
            net, x, self.direction = getattr(self, 'net_g_ema', self.net_g), self.real_ldr, 'ldr2hdr'
        else:
            if self.net_g_hdr2ldr is None:
                raise KeyError('HDR inputs need network_g_hdr2ldr (the tone-mapping generator) in the options')
            net, x, self.direction = self.net_g_hdr2ldr, self.real_hdr, 'hdr2ldr'
        net.eval()
        with torch.no_grad():
            self.output = self.infer(net, x, self._guidance(net, x))
        net.train(self.is_train)

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
