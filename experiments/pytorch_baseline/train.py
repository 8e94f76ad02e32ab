"""The seed's PyTorch SimCLR training loop, made runnable on simclr_jax's prepared data.

Single process (CPU or one GPU):
  python -m experiments.pytorch_baseline.train --dataset synthetic_cxr/64 --data_dir runs/data \
      --image_size 64 --batch_size 64 --epochs 30 --workdir runs/torch_baseline
Several GPUs (DDP, detected from torchrun's environment; --batch_size stays the GLOBAL batch):
  torchrun --nproc_per_node 8 -m experiments.pytorch_baseline.train --amp bf16 --channels_last ...

Writes WORKDIR/config.json, WORKDIR/metrics.jsonl (the keys simclr_jax.train logs),
WORKDIR/encoder_torchvision.pt (torchvision state_dict of the encoder, no fc), which
`python -m simclr_jax.evaluate --torch_weights FILE` evaluates, and WORKDIR/checkpoint.pt.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import time

import torch
from torch import distributed as dist

from experiments.pytorch_baseline import augment
from experiments.pytorch_baseline import data
from experiments.pytorch_baseline import loss as loss_lib
from experiments.pytorch_baseline import model as model_lib

METRIC_KEYS = ('step', 'loss', 'learning_rate', 'positive_accuracy', 'positive_similarity',
               'negative_similarity', 'views_per_second', 'epoch')
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description='PyTorch SimCLR baseline (the seed system) on simclr_jax prepared data.')
  add = parser.add_argument
  add('--dataset', default='synthetic_cxr/64', help='TFDS name[/config] prepared by simclr_jax.prepare')
  add('--data_dir', default='runs/data', help='TFDS data_dir holding the prepared dataset')
  add('--split', default='train')
  add('--image_size', type=int, default=64, help='model input size (random resized crop output)')
  add('--batch_size', type=int, default=64, help='GLOBAL batch of images (each gives 2 views)')
  add('--epochs', type=int, default=30)
  add('--steps', type=int, default=-1, help='> 0 overrides --epochs')
  add('--optimizer', choices=('adam', 'adamw', 'sgd'), default='adam')
  add('--lr', type=float, default=3e-4)
  add('--weight_decay', type=float, default=1e-6,
      help='adam/sgd: L2 added to the gradient (torch semantics); adamw: decoupled')
  add('--momentum', type=float, default=0.9, help='SGD momentum')
  add('--lr_schedule', choices=('constant', 'cosine'), default='constant')
  add('--temperature', type=float, default=0.07)
  add('--head_hidden_dim', type=int, default=-1, help='-1: the feature dimension (2048 for resnet50)')
  add('--head_output_dim', type=int, default=128)
  add('--model', default='resnet50', choices=sorted(model_lib.FEATURE_DIMS))
  add('--amp', choices=tuple(AMP_DTYPES), default='none',
      help='autocast dtype; fp16 also uses a GradScaler')
  add('--channels_last', action='store_true')
  add('--sync_bn', action='store_true', help='SyncBatchNorm under DDP (the seed used per-GPU BN)')
  add('--workers', type=int, default=0, help='DataLoader worker processes per rank')
  add('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
  add('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
  add('--log_every', type=int, default=10)
  add('--workdir', required=True)
  add('--seed', type=int, default=0)
  return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Distributed:
  """Where this process sits: rank among world_size, and its torch device."""
  rank: int
  world_size: int
  local_rank: int
  device: torch.device

  @property
  def is_main(self) -> bool:
    return self.rank == 0


def setup_distributed(device_kind: str = 'auto') -> Distributed:
  """DDP when launched by torchrun (WORLD_SIZE > 1), else a single process on CPU or cuda:0."""
  world_size = int(os.environ.get('WORLD_SIZE', '1'))
  rank = int(os.environ.get('RANK', '0'))
  local_rank = int(os.environ.get('LOCAL_RANK', '0'))
  use_cuda = torch.cuda.is_available() if device_kind == 'auto' else device_kind == 'cuda'
  if use_cuda and not torch.cuda.is_available():
    raise RuntimeError('--device cuda was asked for but torch.cuda.is_available() is False')
  if use_cuda:
    torch.cuda.set_device(local_rank)
    device = torch.device('cuda', local_rank)
  else:
    device = torch.device('cpu')
  if world_size > 1 and not dist.is_initialized():
    dist.init_process_group('nccl' if use_cuda else 'gloo')
  return Distributed(rank, world_size, local_rank, device)


def create_optimizer(parameters, name: str, learning_rate: float, weight_decay: float = 0.0,
                     momentum: float = 0.0) -> torch.optim.Optimizer:
  if name == 'adam':
    return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
  if name == 'adamw':
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
  if name == 'sgd':
    return torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum,
                           weight_decay=weight_decay)
  raise ValueError(f'--optimizer {name!r}: expected adam, adamw or sgd')


def autocast(device: torch.device, amp: str):
  """torch.autocast for --amp bf16/fp16; a no-op context for none."""
  if AMP_DTYPES[amp] is None:
    return contextlib.nullcontext()
  return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def train_step(model, loss_fn, optimizer, scaler, views1, views2, *, amp: str = 'none'):
  """One SimCLR update on two views [N,3,S,S] of the same N images (already on the device).

  Both views go through the model in one forward pass of 2N images, so BatchNorm sees the
  same batch as simclr_jax's train step.

  Returns:
    (loss, z1, z2): the detached loss and projections [N, D] (for the logged metrics).
  """
  optimizer.zero_grad(set_to_none=True)
  with autocast(views1.device, amp):
    _, projections = model(torch.cat([views1, views2], dim=0))  # [2N, D]
    z1, z2 = projections.chunk(2, dim=0)
    loss = loss_fn(z1, z2)
  scaler.scale(loss).backward()
  scaler.step(optimizer)
  scaler.update()
  return loss.detach(), z1.detach(), z2.detach()


def create_model(args, dist_info: Distributed) -> torch.nn.Module:
  """The SimCLR model on the device (channels-last / SyncBN / DDP as asked)."""
  torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts them)
  model = model_lib.SimCLRModel(args.model, args.head_hidden_dim, args.head_output_dim)
  if args.sync_bn and dist_info.world_size > 1:
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
  model = model.to(dist_info.device)
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
  if dist_info.world_size > 1:
    device_ids = [dist_info.local_rank] if dist_info.device.type == 'cuda' else None
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
  return model


def unwrap(model: torch.nn.Module) -> model_lib.SimCLRModel:
  return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_encoder(model: torch.nn.Module, path) -> None:
  """Saves the encoder as a torchvision ResNet state_dict without fc (float32, on CPU)."""
  state_dict = {name: value.detach().cpu().contiguous()
                for name, value in unwrap(model).encoder.state_dict().items()}
  torch.save(state_dict, path)


def _mean_over_ranks(values: dict, dist_info: Distributed) -> dict:
  if dist_info.world_size == 1:
    return values
  names = sorted(values)
  stacked = torch.tensor([values[name] for name in names], dtype=torch.float64,
                         device=dist_info.device)
  dist.all_reduce(stacked)
  return dict(zip(names, (stacked / dist_info.world_size).tolist()))


def train(args: argparse.Namespace) -> dict:
  """Trains the baseline; returns the last logged metrics."""
  if args.threads > 0:
    torch.set_num_threads(args.threads)
  dist_info = setup_distributed(args.device)
  if args.batch_size % dist_info.world_size:
    raise ValueError(f'--batch_size {args.batch_size} (global) must divide by the '
                     f'{dist_info.world_size} processes')
  per_process_batch = args.batch_size // dist_info.world_size
  workdir = pathlib.Path(args.workdir)
  if dist_info.is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(json.dumps(
        {**vars(args), 'framework': 'torch', 'world_size': dist_info.world_size}, indent=2))

  dataset = data.PreparedImageDataset(
      args.dataset, args.data_dir, args.split,
      transform=augment.TwoViews(augment.seed_transform(args.image_size)))
  steps_per_epoch = len(dataset) // args.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'split {args.split!r} of {args.dataset} has {len(dataset)} images, fewer '
                     f'than one global --batch_size {args.batch_size}')
  num_steps = args.steps if args.steps > 0 else args.epochs * steps_per_epoch
  sampler = torch.utils.data.DistributedSampler(
      dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
      seed=args.seed, drop_last=True)
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=per_process_batch, sampler=sampler, drop_last=True,
      num_workers=args.workers, pin_memory=dist_info.device.type == 'cuda',
      persistent_workers=args.workers > 0,
      generator=torch.Generator().manual_seed(args.seed + dist_info.rank))

  model = create_model(args, dist_info)
  loss_fn = loss_lib.NTXentLoss(args.temperature)
  optimizer = create_optimizer(model.parameters(), args.optimizer, args.lr, args.weight_decay,
                               args.momentum)
  scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_steps)
               if args.lr_schedule == 'cosine' else None)
  scaler = torch.amp.GradScaler(dist_info.device.type, enabled=args.amp == 'fp16')
  memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

  model.train()
  step, epoch, last_metrics = 0, 0, {}
  metrics_file = open(workdir / 'metrics.jsonl', 'a') if dist_info.is_main else None
  interval_start, interval_steps = time.perf_counter(), 0
  try:
    while step < num_steps:
      sampler.set_epoch(epoch)
      for views1, views2 in loader:
        views1 = views1.to(dist_info.device, memory_format=memory_format, non_blocking=True)
        views2 = views2.to(dist_info.device, memory_format=memory_format, non_blocking=True)
        learning_rate = optimizer.param_groups[0]['lr']
        loss, z1, z2 = train_step(model, loss_fn, optimizer, scaler, views1, views2, amp=args.amp)
        if scheduler is not None:
          scheduler.step()
        step += 1
        interval_steps += 1
        if step % args.log_every == 0 or step == num_steps:
          values = _mean_over_ranks({'loss': loss.item(), **loss_fn.metrics(z1, z2)}, dist_info)
          elapsed = time.perf_counter() - interval_start
          last_metrics = {
              'step': step, 'loss': values['loss'], 'learning_rate': learning_rate,
              'positive_accuracy': values['positive_accuracy'],
              'positive_similarity': values['positive_similarity'],
              'negative_similarity': values['negative_similarity'],
              'views_per_second': 2 * args.batch_size * interval_steps / elapsed,
              'epoch': step / steps_per_epoch,
          }
          if metrics_file is not None:
            metrics_file.write(json.dumps(last_metrics) + '\n')
            metrics_file.flush()
            print(json.dumps(last_metrics), flush=True)
          interval_start, interval_steps = time.perf_counter(), 0
        if step >= num_steps:
          break
      epoch += 1
  finally:
    if metrics_file is not None:
      metrics_file.close()

  if dist_info.is_main:
    save_encoder(model, workdir / 'encoder_torchvision.pt')
    torch.save({'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
                'step': step, 'args': vars(args)}, workdir / 'checkpoint.pt')
  if dist_info.world_size > 1:
    dist.barrier()
    dist.destroy_process_group()
  return last_metrics


def main(argv=None):
  train(parse_args(argv))


if __name__ == '__main__':
  main()
