"""PairedHDRModel: supervised LDR -> HDR training of any registered architecture, in the same HDR domain as CycleHDR.

For benchmarking restoration baselines against the unpaired CycleHDR under one protocol: the peers of the paper's
table, BasicSR's own architectures (``RRDBNet`` / ``MSRResNet`` with ``upscale: 1``, ``SwinIR``, ``EDSR``, ...) or
the FeedbackUNet itself, trained on ``PairedLDRHDRDataset`` pairs.

Domains. The loss lives in the model domain of :class:`~llmhdr_basicsr.models.hdr_base_model.HDRBaseModel`:
``T(H / 2^headroom)`` (mu-law, mu = 5000) of linear HDR whose white is the LDR's clipping level (``train.headroom``,
default 4, or the generator's own ``headroom``). An architecture says what it outputs with one attribute,
``out_domain``: ``'hdr_mu'`` (that domain; the default for architectures without the attribute, e.g. BasicSR's, which
then learn it directly), or ``'linear'`` (linear HDR with white = 1, e.g. the classical operators); the model converts
``'linear'`` outputs before the loss and for inference.

The ground truth's scale. A paired dataset stores HDR at an arbitrary scale; the model exposes each ground truth
like its LDR (``train.gt_exposure``): ``'ldr'`` (default) multiplies it by the median, over the LDR's well-exposed
pixels (every channel in [0.1, 0.9]), of the ratio of the linearised LDR's luminance to the ground truth's, so white
is where the LDR clips; ``'none'`` keeps the dataset's normalisation.

Options: ``network_g`` (any arch), ``path.pretrain_network_g``, ``train.pixel_opt`` (any BasicSR pixel or perceptual
loss, L1 by default, called as ``loss(output, target)`` in the model domain), ``train.optim_g``, ``train.scheduler``,
``train.ema_decay``, ``train.gt_exposure``, ``train.headroom``; ``val`` as for CycleHDR (float HDR metrics, tiling,
``.exr`` files). Checkpoints ``net_g_<iter>.pth`` in BasicSR's layout with the architecture, loadable by
``llmhdr-infer``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from llmhdr_basicsr.models.hdr_base_model import DEFAULT_HEADROOM, HDRBaseModel, unwrap_output
from llmhdr_basicsr.models.lr_scheduler import build_scheduler
from llmhdr_basicsr.utils.options import check_keys
from llmhdr_basicsr.utils.tonemap import luminance, srgb_decode

TRAIN_KEYS = ('pixel_opt', 'optim_g', 'scheduler', 'total_iter', 'warmup_iter', 'ema_decay', 'gt_exposure', 'headroom',
              'amp', 'channels_last')  # fmt: skip
OUTPUT_DOMAINS = ('hdr_mu', 'linear')
GT_EXPOSURES = ('ldr', 'none')


def exposure_to_ldr(ldr: torch.Tensor, gt: torch.Tensor, lo: float = 0.1, hi: float = 0.9) -> torch.Tensor:
    """``(N, 1, 1, 1)`` gain that exposes linear HDR ``gt`` like its LDR ``ldr`` (both ``(N, 3, H, W)``).

    The median over the LDR's well-exposed pixels (every channel in ``[lo, hi]``) of ``Y(srgb_decode(ldr)) / Y(gt)``;
    1 for an image without such pixels (or a black ground truth there).
    """
    lin, lum_gt = luminance(srgb_decode(ldr)), luminance(gt)
    ok = (ldr.amin(dim=1, keepdim=True) >= lo) & (ldr.amax(dim=1, keepdim=True) <= hi) & (lum_gt > 0)
    gains = []
    for i in range(ldr.size(0)):
        ratio = lin[i][ok[i]] / lum_gt[i][ok[i]]
        gains.append(ratio.median() if ratio.numel() else ldr.new_tensor(1.0))
    return torch.stack(gains).view(-1, 1, 1, 1)


@MODEL_REGISTRY.register()
class PairedHDRModel(HDRBaseModel):
    """Supervised LDR -> HDR training of any architecture on pairs (see the module docstring).

    Batches: ``{'lq': (N, 3, H, W) display-referred LDR in [0, 1], 'gt': (N, 3, H, W) linear HDR, 'lq_path'}``
    (:class:`~llmhdr_basicsr.data.paired_hdr_dataset.PairedLDRHDRDataset`); test batches without ``gt`` too.
    """

    def __init__(self, opt: dict):
        super().__init__(opt)
        self.init_hdr_options()
        train_opt = opt.get('train') or {}
        self.net_g = self.build_net('g')
        bare = self.get_bare_model(self.net_g)
        self.out_domain = getattr(bare, 'out_domain', 'hdr_mu')
        if self.out_domain not in OUTPUT_DOMAINS:
            raise ValueError(
                f'network_g ({opt["network_g"]["type"]}) has out_domain {self.out_domain!r}; PairedHDRModel trains '
                f'architectures whose output is one of {OUTPUT_DOMAINS}'
            )
        self.headroom = float(getattr(bare, 'headroom', train_opt.get('headroom', DEFAULT_HEADROOM)))
        if self.is_train:
            check_keys(train_opt, TRAIN_KEYS, 'train')
            self.init_training_settings()

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.net_g.train()
        self.gt_exposure = train_opt.get('gt_exposure', 'ldr')
        if self.gt_exposure not in GT_EXPOSURES:
            raise ValueError(f'train.gt_exposure must be one of {GT_EXPOSURES}, got {self.gt_exposure!r}')
        pixel_opt = train_opt.get('pixel_opt') or {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
        try:
            self.cri_pix = build_loss(pixel_opt).to(self.device)
        except TypeError as err:
            raise TypeError(f'train.pixel_opt ({pixel_opt.get("type")}): {err}') from err
        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            self.net_g_ema = self.model_to_device(build_network(self.opt['network_g']))
            self.model_ema(0)
            self.net_g_ema.eval()
        optim_opt = dict(train_opt.get('optim_g') or {'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.999]})
        optim_type = optim_opt.pop('type')
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f'network_g ({self.opt["network_g"]["type"]}) has no trainable parameters to train')
        self.optimizer_g = self.get_optimizer(optim_type, params, **optim_opt)
        self.optimizers.append(self.optimizer_g)
        if train_opt.get('scheduler'):
            self.schedulers = [build_scheduler(self.optimizer_g, train_opt['scheduler'])]
        self.setup_amp(train_opt.get('amp'))

    # ---------------------------------------------------------------------------------------------------- data
    def feed_data(self, data: dict):
        self.lq = data['lq'].to(self.device)
        self.gt = data['gt'].to(self.device) if 'gt' in data else None
        if self.gt is not None and self.is_train and self.gt_exposure == 'ldr':
            self.gt = self.gt * exposure_to_ldr(self.lq, self.gt)
        self.lq, self.gt = self.to_memory_format(self.lq), self.to_memory_format(self.gt)  # train.channels_last

    def to_model_output(self, out: torch.Tensor) -> torch.Tensor:
        """The architecture's output in the model domain (``'linear'`` outputs are compressed)."""
        return self.to_model_hdr(out.clamp(min=0.0)) if self.out_domain == 'linear' else out

    # ------------------------------------------------------------------------------------------------ training
    def optimize_parameters(self, current_iter: int):
        self.optimizer_g.zero_grad(set_to_none=True)
        with self.autocast():
            self.output = self.to_model_output(unwrap_output(self.net_g(self.lq)))
            l_pix = self.cri_pix(self.output, self.to_model_hdr(self.gt))
        losses = OrderedDict(l_pix=l_pix)
        self.step(losses, self.optimizer_g, current_iter)
        self.log_dict = self.reduce_loss_dict({k: v.detach() for k, v in losses.items()})
        self.log_dict.update(self.amp_log())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ------------------------------------------------------------------------------------------------ inference
    def test(self):
        net = getattr(self, 'net_g_ema', self.net_g)
        net.eval()
        with torch.no_grad():
            self.output = self.to_model_output(self.infer(net, self.lq).to(self.device))
        net.train(self.is_train)

    def get_current_visuals(self):
        """CPU tensors: ``lq`` (input LDR), ``result`` (linear HDR, white = 1), ``gt`` (linear HDR) if present."""
        out = OrderedDict(lq=self.lq.detach().cpu(), result=self.to_linear(self.output.detach().float()).cpu())
        if self.gt is not None:
            out['gt'] = self.gt.detach().cpu()
        return out

    def save(self, epoch, current_iter):
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter)
