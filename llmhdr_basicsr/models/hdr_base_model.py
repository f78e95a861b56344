"""HDRBaseModel: what every LDR<->HDR model of the plugin shares, apart from its training step.

BasicSR's ``BaseModel`` assumes 8-bit images (``tensor2img``) and CUDA; an HDR model needs float validation, HDR
files, the mu-law model domain and CPU-safe, atomic checkpoints. This base provides them, so that a model subclass
only defines its networks, ``feed_data``, ``optimize_parameters``, ``test`` and ``get_current_visuals``:

- construction: :meth:`build_net` (a ``network_<name>`` block, moved to the device, wrapped for DDP/DP without CUDA
  device ids on CPU, ``pretrain_network_<name>`` loaded), :meth:`get_optimizer` (Adam/AdamW), AMP set-up
  (``train.amp``), the finite-loss guard and the optimizer step;
- domains: :meth:`to_model_hdr` / :meth:`to_linear` between linear HDR (diffuse white ~ 1) and the generators'
  mu-law domain ``T(H / 2^headroom)``;
- inference: :meth:`infer` runs a generator on a whole test image, untiled or with ``val.tile``
  (:class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`);
- validation (``nondist_validation``): the registered HDR metrics on float linear HDR (the clipped-region metrics get
  the LDR input), ``.exr``/``.hdr`` + tone-mapped preview PNG, previews and metrics in tensorboard;
- checkpoints: BasicSR's layout ``{param_key: state_dict, 'arch': {...}}`` written atomically, networks before the
  ``.state`` file, so that a ``.state`` file implies complete networks; the training state also carries the random
  state, the data position and the image pools (:mod:`llmhdr_basicsr.utils.rng_state`), so ``--auto_resume``
  continues exactly.

Subclasses set ``self.headroom`` (the HDR domain of their generators) and call :meth:`init_hdr_options` first.
"""

from __future__ import annotations

import contextlib
import inspect
import os.path as osp
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import METRIC_REGISTRY
from torch.nn.parallel import DataParallel, DistributedDataParallel
from tqdm import tqdm

from llmhdr_basicsr.archs.arch_util import accepted_kwargs
from llmhdr_basicsr.utils import rng_state
from llmhdr_basicsr.utils.checkpoint_arch import network_opt_from_checkpoint
from llmhdr_basicsr.utils.fileio import atomic_write
from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr
from llmhdr_basicsr.utils.options import check_keys
from llmhdr_basicsr.utils.tile_option import parse_tile_option
from llmhdr_basicsr.utils.tiling import GlobalStatsTiler
from llmhdr_basicsr.utils.tonemap import hdr_to_model, model_to_hdr, tonemap_preview
from llmhdr_basicsr.version import __version__

DEFAULT_HEADROOM = 4.0  # stops above white of the HDR domain, for generators without a ``headroom`` attribute
VAL_KEYS = ('val_freq', 'save_img', 'suffix', 'pbar', 'metrics', 'output_ext', 'preview', 'preview_stops',
            'tb_images', 'clip_guidance', 'tile')  # fmt: skip


def unwrap_output(output):
    """Generators may return a list of per-iteration outputs (deep supervision): the last one is the result."""
    return output[-1] if isinstance(output, list | tuple) else output


class HDRBaseModel(BaseModel):
    """Float-HDR validation, atomic checkpoints and CPU-safe plumbing for LDR<->HDR models (module docstring)."""

    headroom: float = 0.0
    direction: str = 'ldr2hdr'

    def init_hdr_options(self) -> None:
        """Check the ``val`` block (a misspelt key such as ``tiles`` is reported, not ignored) and parse ``val.tile``
        before any network is built."""
        if self.opt.get('val'):
            check_keys(self.opt['val'], VAL_KEYS, 'val')
        self.val_tile = parse_tile_option((self.opt.get('val') or {}).get('tile'), 'val.tile')

    # ------------------------------------------------------------------------------------------------ construction
    def build_net(self, name: str):
        """Build ``network_<name>`` (completed from the checkpoint's ``arch`` entry, so test option files need only
        the path), move it to the device and load ``path.pretrain_network_<name>`` if set."""
        key = f'network_{name}'
        self.opt[key] = network_opt_from_checkpoint(self.opt, name)
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

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        optimizers = {'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}
        if optim_type not in optimizers:
            raise ValueError(f'optimizer type {optim_type!r} is not supported; choose one of {sorted(optimizers)}')
        return optimizers[optim_type](params, lr, **kwargs)

    @staticmethod
    def set_requires_grad(nets, flag: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(flag)

    # ------------------------------------------------------------------------------------------------ precision
    def setup_amp(self, amp) -> None:
        """``train.amp``: None/'fp32' (default), 'bf16' or 'fp16' autocast on a GPU (fp16 with a GradScaler)."""
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

    def autocast(self):
        if getattr(self, 'amp_dtype', None) is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type='cuda', dtype=self.amp_dtype)

    def step(self, loss: torch.Tensor, optimizer) -> None:
        """Backward pass and optimizer step (through the GradScaler with fp16)."""
        if getattr(self, 'amp_dtype', None) is torch.float16:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    @staticmethod
    def check_finite(losses: dict, current_iter: int) -> None:
        """A NaN/Inf loss stops training before the optimizer step, so the weights (and checkpoints) stay good."""
        for name, value in losses.items():
            if not torch.isfinite(value.detach()).all():
                raise FloatingPointError(
                    f'Non-finite loss {name} = {value.item()} at iteration {current_iter}; training stopped before '
                    'the optimizer step. The last saved checkpoint is intact: lower the learning rate or check the '
                    'data, then resume with --auto_resume.'
                )

    # ---------------------------------------------------------------------------------------------------- domains
    def to_model_hdr(self, linear: torch.Tensor) -> torch.Tensor:
        """Linear HDR (diffuse white ~ 1) -> the model's domain ``T(min(H / 2^headroom, 1))`` in [0, 1]
        (mu-law, mu = 5000; values beyond the headroom clip)."""
        return hdr_to_model(linear, self.headroom)

    def to_linear(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_hdr`: model-domain HDR in [0, 1] -> linear HDR, white ~ 1, up to 2^headroom."""
        return model_to_hdr(t, self.headroom)

    # ------------------------------------------------------------------------------------------------ inference
    def infer(self, net, x: torch.Tensor, guidance=None) -> torch.Tensor:
        """One generator (in eval mode) on a whole test image, untiled or as ``val.tile`` asks.

        Tiled inference is the one of ``llmhdr-infer --tile``: :class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`
        records the instance-norm statistics and the guidance vectors once on a downscaled copy of the image
        (ExpandNet's global branch) and replays them in every tile, so tiles agree; one tile at a time is on the
        device and the blended result is assembled on the CPU.

        Args:
            net: a generator, possibly wrapped in (D)DP.
            x: ``(N, 3, H, W)`` float32 generator input in [0, 1].
            guidance: the generator's guidance (tensor or callable), or None.

        Returns:
            ``(N, 3, H, W)`` float32 output in [0, 1]: on ``self.device`` untiled, on the CPU tiled.
        """
        if self.val_tile is None:
            kwargs = {} if guidance is None else {'guidance': guidance}
            return unwrap_output(net(x, **accepted_kwargs(net, kwargs)))
        tile = self.val_tile
        tiler = GlobalStatsTiler(self.get_bare_model(net), tile.size, tile.overlap, tile.global_size, self.device)
        return tiler(x, guidance=guidance)

    # ----------------------------------------------------------------------------------------------- validation
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if self.opt['rank'] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Metrics on float linear HDR, ``.exr``/``.hdr`` + tone-mapped preview PNG, previews to tensorboard.

        Uses ``feed_data`` / ``test`` / ``get_current_visuals`` of the subclass; visuals are CPU tensors ``lq`` (the
        input), ``result`` (linear HDR, or display LDR for ``direction == 'hdr2ldr'``) and ``gt`` if present.
        """
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        with_metrics = bool(metrics_opt)
        if with_metrics:
            if not hasattr(self, 'metric_results'):
                self.metric_results = {m: 0 for m in metrics_opt}
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {m: 0 for m in self.metric_results}
            counts = {m: 0 for m in metrics_opt}
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
        pbar = tqdm(total=len(dataloader), unit='image') if val_opt.get('pbar', False) else None
        for idx, val_data in enumerate(dataloader):
            path = val_data.get('lq_path', val_data.get('hdr_path'))[0]
            img_name = osp.splitext(osp.basename(path))[0]
            self.feed_data(val_data)
            self.test()
            visuals = self.get_current_visuals()
            result = visuals['result']
            shown = tonemap_preview(result, preview, stops) if self.direction == 'ldr2hdr' else result
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
                lq = visuals['lq'][0].permute(1, 2, 0).numpy()
                for name, opt_ in metrics_opt.items():
                    value = float(calculate_metric(self._metric_inputs(opt_, data, lq), opt_))
                    if value == value:  # NaN: a clipped-region metric on an image without clipped pixels
                        self.metric_results[name] += value
                        counts[name] += 1
            self.gt = None
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar is not None:
            pbar.close()
        if with_metrics:
            if not any(counts.values()):
                get_root_logger().warning(f'{dataset_name}: no ground truth, metrics skipped.')
                return
            for metric in self.metric_results:
                self.metric_results[metric] /= max(counts.get(metric, 0), 1)
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    @staticmethod
    def _metric_inputs(metric_opt: dict, data: dict, lq) -> dict:
        """The metric's inputs: prediction and ground truth, plus the LDR input (``lq``) for metrics that take it."""
        func = METRIC_REGISTRY.get(metric_opt['type'])
        return {**data, 'lq': lq} if 'lq' in inspect.signature(func).parameters else data

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
    @staticmethod
    def _atomic_save(obj, path: str) -> None:
        """torch.save through a temporary file and a rename: never a half-written checkpoint under ``path``."""
        atomic_write(path, lambda f: torch.save(obj, f), fsync=True)

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR layout ``{param_key: state_dict}`` in ``models/<net_label>_<iter|latest>.pth``, atomically, with
        the architecture (``arch``) so that ``llmhdr-infer`` can rebuild the network without the option file."""
        label = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict((k.removeprefix('module.'), v.cpu()) for k, v in state.items())
        arch = self.opt.get(net_label.replace('net_', 'network_', 1))
        if arch is not None:
            kwargs = dict(arch)
            save_dict['arch'] = {'type': kwargs.pop('type'), 'kwargs': kwargs}
            if not hasattr(self.get_bare_model(nets[0]), 'headroom'):  # e.g. BasicSR's archs: the model's domain
                save_dict['arch']['headroom'] = float(self.headroom)
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
        if getattr(self, 'amp_dtype', None) is torch.float16:
            state['scaler'] = self.scaler.state_dict()
        state.update(rng_state.training_state_extras(self))  # random state, data position, image pools: exact resume
        if getattr(self, 'judge', None) is not None:  # the VLM judge's answers, with the iteration each judged
            state['vlm_judge'] = self.judge.state_dict()
        self._atomic_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        rng_state.restore_training_extras(self, resume_state)
        if getattr(self, 'judge', None) is not None and 'vlm_judge' in resume_state:
            self.judge.load_state_dict(resume_state['vlm_judge'])
        if 'scaler' in resume_state and getattr(self, 'amp_dtype', None) is torch.float16:
            self.scaler.load_state_dict(resume_state['scaler'])
