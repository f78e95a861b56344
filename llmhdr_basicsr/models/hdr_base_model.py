"""HDRBaseModel: what every LDR<->HDR model of the plugin shares, apart from its training step.

BasicSR's ``BaseModel`` assumes 8-bit images (``tensor2img``) and CUDA; an HDR model needs float validation, HDR
files, the mu-law model domain and CPU-safe, atomic checkpoints. This base provides them, so that a model subclass
only defines its networks, ``feed_data``, ``optimize_parameters``, ``test`` and ``get_current_visuals``:

- construction: :meth:`build_net` (a ``network_<name>`` block, moved to the device, wrapped for DDP/DP without CUDA
  device ids on CPU, ``pretrain_network_<name>`` loaded), :meth:`get_optimizer` (Adam/AdamW), AMP set-up
  (``train.amp``: one GradScaler per optimizer, non-finite steps skipped and counted), ``train.channels_last``, the
  finite-loss guard and the optimizer step (:meth:`step`);
- domains: :meth:`to_model_hdr` / :meth:`to_linear` between linear HDR (diffuse white ~ 1) and the generators'
  mu-law domain ``T(H / 2^headroom)``;
- inference: :meth:`infer` runs a generator on a whole test image, untiled or with ``val.tile``
  (:class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`);
- validation (:meth:`validate`; under DDP every rank takes its share and the metric sums are all-reduced): the
  registered HDR metrics on float linear HDR (the clipped-region metrics get the LDR input; float32 on the model's
  device where exact enough), ``.exr``/``.hdr`` + tone-mapped preview PNG, previews and metrics in tensorboard;
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
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import METRIC_REGISTRY
from torch.nn.parallel import DataParallel, DistributedDataParallel
from tqdm import tqdm

from llmhdr_basicsr.archs.arch_util import accepted_kwargs
from llmhdr_basicsr.utils import rng_state
from llmhdr_basicsr.utils.amp import SkippedSteps, grads_finite, optimizer_params, parse_amp
from llmhdr_basicsr.utils.checkpoint_arch import network_opt_from_checkpoint
from llmhdr_basicsr.utils.fileio import atomic_write
from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr
from llmhdr_basicsr.utils.options import check_keys
from llmhdr_basicsr.utils.tile_option import AUTO, parse_tile_option, tile_min_pixels
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
    amp_dtype: torch.dtype | None = None  # autocast dtype of training (``train.amp``), None = fp32

    def init_hdr_options(self) -> None:
        """Check the ``val`` block (a misspelt key such as ``tiles`` is reported, not ignored) and parse ``val.tile``
        before any network is built."""
        if self.opt.get('val'):
            check_keys(self.opt['val'], VAL_KEYS, 'val')
        tile = (self.opt.get('val') or {}).get('tile', AUTO)
        self.val_tile = parse_tile_option(tile, 'val.tile')
        self.val_tile_min_pixels = tile_min_pixels(tile)  # auto: only images above 2 MP are tiled

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
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False)
            )
        elif self.opt['num_gpu'] > 1:
            net = DataParallel(net)
        return net

    @property
    def channels_last(self) -> bool:
        """``train.channels_last``: networks and the image batches of each forward in channels_last memory format
        (NHWC strides; on CUDA the layout of tensor-core convolutions, on the CPU the oneDNN one). Values are
        unchanged, only the layout: outputs equal the contiguous ones to float rounding (1e-5 measured on the CPU)."""
        return bool((self.opt.get('train') or {}).get('channels_last'))

    def to_memory_format(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """A ``(N, C, H, W)`` batch in channels_last with ``train.channels_last``; anything else unchanged."""
        if x is None or not self.channels_last or x.dim() != 4:
            return x
        return x.contiguous(memory_format=torch.channels_last)

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
        """``train.amp``: None/'fp32' (default), 'bf16' or 'fp16' autocast on a GPU (see :mod:`.utils.amp`)."""
        self.enable_amp(parse_amp(amp, self.device))

    def enable_amp(self, dtype: torch.dtype | None) -> None:
        """Autocast to ``dtype`` (None: fp32) with one GradScaler per optimizer (active for fp16 only) and the
        skipped-step counter. ``setup_amp`` calls it with the parsed option."""
        self.amp_dtype = dtype
        self.scalers: list[torch.amp.GradScaler] = []
        self.amp_skips = SkippedSteps()

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def scaler_for(self, optimizer) -> torch.amp.GradScaler:
        """The GradScaler of ``optimizer`` (by its position in ``self.optimizers``), created on first use."""
        while len(self.scalers) < len(self.optimizers):
            self.scalers.append(torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16))
        return self.scalers[self.optimizers.index(optimizer)]

    def _optimizer_name(self, optimizer) -> str:
        names = {id(v): k for k, v in vars(self).items() if k.startswith('optimizer_')}
        return names.get(id(optimizer), f'optimizer {self.optimizers.index(optimizer)}')

    def step(self, losses: dict, optimizer, current_iter: int) -> None:
        """Backward pass of the sum of ``losses`` (``{name: scalar tensor}``) and the optimizer step.

        fp32: a non-finite loss raises before the backward pass (:meth:`check_finite`). AMP: the backward pass always
        runs (DDP ranks stay in step), through the optimizer's GradScaler with fp16; a non-finite loss or unscaled
        gradient skips this optimizer's step (counted, :class:`~llmhdr_basicsr.utils.amp.SkippedSteps`); the scaler
        is updated once per step of its optimizer.
        """
        loss = sum(losses.values())
        if self.amp_dtype is None:
            self.check_finite(losses, current_iter)
            loss.backward()
            optimizer.step()
            return
        scaler = self.scaler_for(optimizer)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # real gradients, for the check (and for scaler.step, which will not redo it)
        finite = bool(torch.isfinite(loss.detach()).all()) and grads_finite(optimizer_params(optimizer))
        if self.amp_skips.allow(finite, self._optimizer_name(optimizer), current_iter):
            scaler.step(optimizer)
        else:
            optimizer.zero_grad(set_to_none=True)
        scaler.update()

    def amp_log(self) -> dict[str, float]:
        """``{'amp_skipped_steps': n}`` under AMP (tensorboard ``amp/skipped_steps``), empty in fp32."""
        return {} if self.amp_dtype is None else {'amp_skipped_steps': float(self.amp_skips.count)}

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
        """One generator (in eval mode) on a whole test image, untiled or as ``val.tile`` asks (``auto``, the
        default: tiled above 2 MP, :mod:`llmhdr_basicsr.utils.tile_option`).

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
        if self.val_tile is None or x.shape[-2] * x.shape[-1] <= self.val_tile_min_pixels:
            kwargs = {} if guidance is None else {'guidance': guidance}
            return unwrap_output(net(x, **accepted_kwargs(net, kwargs)))
        tile = self.val_tile
        tiler = GlobalStatsTiler(self.get_bare_model(net), tile.size, tile.overlap, tile.global_size, self.device)
        return tiler(x, guidance=guidance)

    # ----------------------------------------------------------------------------------------------- validation
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Every rank validates its share of the set (images ``rank::world_size``, BasicSR's pattern); metric sums
        and counts are all-reduced, rank 0 logs them. Each rank writes the result files of its own images."""
        rank, world_size = get_dist_info()
        self.validate(dataloader, current_iter, tb_logger, save_img, rank, world_size)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self.validate(dataloader, current_iter, tb_logger, save_img)

    @staticmethod
    def _val_batches(dataloader, rank: int, world_size: int):
        """``(index, batch)`` of this rank's share: the dataloader itself in one process, else the batches of one
        image ``rank, rank + world_size, ...`` collated as the dataloader would."""
        if world_size == 1:
            yield from enumerate(dataloader)
            return
        dataset, collate = dataloader.dataset, dataloader.collate_fn
        for idx in range(rank, len(dataset), world_size):
            yield idx, collate([dataset[idx]])

    def validate(self, dataloader, current_iter, tb_logger, save_img, rank: int = 0, world_size: int = 1) -> None:
        """Metrics on float linear HDR, ``.exr``/``.hdr`` + tone-mapped preview PNG, previews to tensorboard, over
        this rank's share of the images (all of them in one process).

        Uses ``feed_data`` / ``test`` / ``get_current_visuals`` of the subclass; visuals are CPU tensors ``lq`` (the
        input), ``result`` (linear HDR, or display LDR for ``direction == 'hdr2ldr'``) and ``gt`` if present.
        Metrics run on the model's device, in float32 where that is exact enough (:meth:`_metric_opt`).
        """
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        with_metrics = bool(metrics_opt)
        sums = {m: 0.0 for m in metrics_opt}
        counts = {m: 0 for m in metrics_opt}
        ext = '.' + val_opt.get('output_ext', 'exr').lstrip('.')
        preview, stops = val_opt.get('preview', 'reinhard'), val_opt.get('preview_stops', 0.0)
        tb_images = val_opt.get('tb_images', 4)
        if self.val_tile is not None and not self.val_tile_min_pixels and rank == 0:  # explicit tiling (auto: silent)
            tile = self.val_tile
            g = tile.size if tile.global_size is None else tile.global_size
            glob = 'the full image' if g <= 0 else f'a copy of at most {g} x {g} px'
            get_root_logger().info(
                f'{dataset_name}: tiled inference (val.tile): tile {tile.size} px, overlap {tile.overlap} px, '
                f'instance-norm statistics and guidance from {glob}'
            )
        pbar = tqdm(total=len(dataloader.dataset), unit='image') if val_opt.get('pbar', False) and rank == 0 else None
        for idx, val_data in self._val_batches(dataloader, rank, world_size):
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
                for name, value in self._image_metrics(metrics_opt, visuals).items():
                    if value == value:  # NaN: a clipped-region metric on an image without clipped pixels
                        sums[name] += value
                        counts[name] += 1
            self.gt = None
            if pbar is not None:
                pbar.update(world_size)
                pbar.set_description(f'Test {img_name}')
        if pbar is not None:
            pbar.close()
        if with_metrics:
            self._finish_metrics(sums, counts, dataset_name, current_iter, tb_logger, world_size)

    def _image_metrics(self, metrics_opt: dict, visuals: dict) -> dict[str, float]:
        """Every ``val.metrics`` entry of one image: prediction ``visuals['result']`` vs ``visuals['gt']`` (CPU
        ``(1, 3, H, W)`` float32 linear HDR), plus the LDR input for the clipped-region metrics."""
        data = dict(img=visuals['result'][0].permute(1, 2, 0).numpy(), img2=visuals['gt'][0].permute(1, 2, 0).numpy())
        lq = visuals['lq'][0].permute(1, 2, 0).numpy()
        return {name: float(calculate_metric(self._metric_inputs(opt_, data, lq), self._metric_opt(opt_)))
                for name, opt_ in metrics_opt.items()}  # fmt: skip

    def _metric_opt(self, metric_opt: dict) -> dict:
        """The metric's options; unless the block sets them, metrics that take a ``device`` run on the model's
        device, and those with a ``precision`` in float32 (PSNR-mu, log-PSNR, PU21-PSNR, the clipped-region metrics:
        within 3e-5 dB / 6e-7 stops of float64 on the sample images, :mod:`~llmhdr_basicsr.metrics.hdr_metric`)."""
        params = inspect.signature(METRIC_REGISTRY.get(metric_opt['type'])).parameters
        defaults = {'device': str(self.device), 'precision': 'float32'}
        return {**{k: v for k, v in defaults.items() if k in params}, **metric_opt}

    def _finish_metrics(self, sums: dict, counts: dict, dataset_name: str, current_iter, tb_logger, world_size: int):
        """Means over the images (all ranks: sums and counts all-reduced), best values, the log (rank 0)."""
        names = list(sums)
        if world_size > 1:
            totals = torch.tensor([sums[n] for n in names] + [counts[n] for n in names], dtype=torch.float64,
                                  device=self.device)  # fmt: skip
            torch.distributed.all_reduce(totals)
            values = totals.tolist()
            sums, counts = dict(zip(names, values[: len(names)])), dict(zip(names, values[len(names) :]))
        if not hasattr(self, 'metric_results'):
            self.metric_results = {m: 0 for m in names}
        self._initialize_best_metric_results(dataset_name)
        self.metric_results = {m: 0 for m in self.metric_results}
        if not any(counts.values()):
            get_root_logger().warning(f'{dataset_name}: no ground truth, metrics skipped.')
            return
        self.metric_results = {m: sums.get(m, 0.0) / max(counts.get(m, 0), 1) for m in self.metric_results}
        for metric, value in self.metric_results.items():
            self._update_best_metric_result(dataset_name, metric, value, current_iter)
        if get_dist_info()[0] == 0:
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
        if self.amp_dtype is not None:  # one GradScaler per optimizer (fp16) and the skipped-step count
            state['scalers'] = [self.scaler_for(o).state_dict() for o in self.optimizers]
            state['amp_skipped'] = self.amp_skips.state_dict()
        state.update(rng_state.training_state_extras(self))  # random state, data position, image pools: exact resume
        if getattr(self, 'judge', None) is not None:  # the VLM judge's answers, with the iteration each judged
            state['vlm_judge'] = self.judge.state_dict()
        self._atomic_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        rng_state.restore_training_extras(self, resume_state)
        if getattr(self, 'judge', None) is not None and 'vlm_judge' in resume_state:
            self.judge.load_state_dict(resume_state['vlm_judge'])
        self.resume_amp(resume_state)

    def resume_amp(self, resume_state: dict) -> None:
        """Restore the GradScalers (fp16) and the skipped-step count; a state of the single shared scaler of older
        versions (``scaler``) seeds every optimizer's scaler."""
        if self.amp_dtype is None:
            return
        scalers = resume_state.get('scalers')
        if scalers is None and 'scaler' in resume_state:
            scalers = [resume_state['scaler']] * len(self.optimizers)
        for optimizer, state in zip(self.optimizers, scalers or []):
            if state:  # a disabled (bf16) scaler's state is empty
                self.scaler_for(optimizer).load_state_dict(state)
        self.amp_skips.load_state_dict(resume_state.get('amp_skipped', {}))
