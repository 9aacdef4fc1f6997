"""PyTorch twin of the quick-preset SSD train step, for a side-by-side CPU throughput comparison.

    pip install torch   # not a project dependency; nothing in adapt/ or tests/ imports this file
    PYTHONPATH=. python benchmarks/torch_ssd_reference.py   # the quick preset's model, 1 and 2 threads
    python -m experiments.benchmark                           # the JAX side, same batch

Same architecture and step as adapt's SSD for a `resnet18` preset (levels, extra layers, width, default boxes,
learning rate, weight decay and clipping are read from the preset): torchvision-style basic-block ResNet-18
with every channel count scaled as `adapt.models.layers.make_divisible`, extra 1x1 + stride-2 3x3 conv/BN/ReLU
levels, one 3x3 class and box conv per level; the same default boxes (adapt.anchors), IoU-0.5 argmax matching
with each ground truth keeping its best anchor, the (10, 10, 5, 5) box coder, softmax cross-entropy with 3:1
hard-negative mining plus smooth L1, normalised by the positives, AdamW with weight decay and global-norm
clipping. Matching is batched over the images like the JAX step (no Python loop over images). Every
combination of thread count and memory format (channels-last, contiguous) is timed: on a 2-core machine shared
with other processes, PyTorch's OpenMP BatchNorm with 2 threads can be 10x slower than with 1.
"""
import argparse
import importlib.util
import math
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from adapt.anchors import ssd_default_boxes
from adapt.models.ssd import level_ratios
from experiments.benchmark import random_batch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_divisible(value, divisor=8):
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(cin, cout, k, stride=1, pad=None):
    pad = k // 2 if pad is None else pad
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout, momentum=0.01))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.c2 = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3)
        self.short = conv_bn(cin, cout, 1, stride, 0) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.short(x) + self.c2(F.relu(self.c1(x))))


class TorchSSD(nn.Module):
    def __init__(self, num_classes, width, levels, extra, per_location):
        super().__init__()
        ch = [make_divisible(64 * width * 2 ** s) for s in range(4)]
        self.stem = conv_bn(3, make_divisible(64 * width), 7, 2, 3)
        stages, cin = [], make_divisible(64 * width)
        for s, c in enumerate(ch):
            stages.append(nn.Sequential(Basic(cin, c, 1 if s == 0 else 2), Basic(c, c, 1)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.levels = [int(name[1]) - 2 for name in levels]  # C2 -> stage index 0
        self.stages = self.stages[:max(self.levels) + 1]
        extras, cin = [], ch[max(self.levels)]
        for c in extra:
            mid = max(c // 2, 8)
            extras.append(nn.Sequential(conv_bn(cin, mid, 1, 1, 0), nn.ReLU(), conv_bn(mid, c, 3, 2), nn.ReLU()))
            cin = c
        self.extras = nn.ModuleList(extras)
        chans = [ch[i] for i in self.levels] + list(extra)
        self.num_out = num_classes + 1
        self.cls = nn.ModuleList(nn.Conv2d(c, k * self.num_out, 3, 1, 1) for c, k in zip(chans, per_location))
        self.box = nn.ModuleList(nn.Conv2d(c, k * 4, 3, 1, 1) for c, k in zip(chans, per_location))
        self.register_buffer('mean', torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images):
        x = F.relu(self.stem((images - self.mean) / self.std))
        x = F.max_pool2d(x, 3, 2, 1)
        maps = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.levels:
                maps.append(x)
        for e in self.extras:
            x = e(x)
            maps.append(x)
        b = images.shape[0]
        cls = [c(m).permute(0, 2, 3, 1).reshape(b, -1, self.num_out) for c, m in zip(self.cls, maps)]
        box = [h(m).permute(0, 2, 3, 1).reshape(b, -1, 4) for h, m in zip(self.box, maps)]
        return torch.cat(cls, 1), torch.cat(box, 1), [m.shape[-2:] for m in maps]


def pairwise_iou(a, b):
    """a [B, G, 4], b [A, 4] (yxyx) -> [B, G, A]."""
    lo = torch.maximum(a[..., None, :2], b[None, None, :, :2])
    hi = torch.minimum(a[..., None, 2:], b[None, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[..., None] + area_b[None, None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def encode(boxes, anchors, w=(10.0, 10.0, 5.0, 5.0)):
    def parts(x):
        return (x[..., 0] + x[..., 2]) / 2, (x[..., 1] + x[..., 3]) / 2, x[..., 2] - x[..., 0], x[..., 3] - x[..., 1]
    cy, cx, h, wd = parts(boxes)
    ay, ax, ah, aw = parts(anchors)
    h, wd = h.clamp(min=1e-8), wd.clamp(min=1e-8)
    return torch.stack([w[0] * (cy - ay) / ah, w[1] * (cx - ax) / aw, w[2] * torch.log(h / ah),
                        w[3] * torch.log(wd / aw)], -1)


def targets(anchors, boxes, labels, mask, threshold=0.5):
    iou = torch.where(mask[..., None], pairwise_iou(boxes, anchors), torch.full((), -1.0))  # [B, G, A]
    best_iou, best_gt = iou.max(1)
    matched = best_iou >= threshold
    gt_best = iou.max(2, keepdim=True).values
    low_quality = ((iou == gt_best) & (gt_best > 0)).any(1)
    positive = matched | low_quality
    cls_t = torch.where(positive, labels.gather(1, best_gt) + 1, torch.zeros_like(best_gt))
    box_t = encode(boxes.gather(1, best_gt[..., None].expand(-1, -1, 4)), anchors)
    return cls_t, box_t, positive, ~positive


def ssd_loss(cls_logits, box_codes, cls_t, box_t, positive, negative, ratio=3):
    ce = F.cross_entropy(cls_logits.reshape(-1, cls_logits.shape[-1]), cls_t.reshape(-1),
                         reduction='none').view_as(cls_t)
    num_pos = positive.sum(1, keepdim=True)
    neg_loss = torch.where(negative, ce.detach(), torch.full((), -math.inf))
    rank = neg_loss.sort(dim=1, descending=True, stable=True)[1].argsort(dim=1)  # torchvision SSD's mining
    hard = negative & (rank < ratio * num_pos)
    norm = positive.sum().clamp(min=1).float()
    box = (F.smooth_l1_loss(box_codes, box_t, reduction='none', beta=1.0).sum(-1) * positive).sum()
    return (ce[positive | hard].sum() + box) / norm


def torch_batch(batch_size, image_size, max_boxes, num_classes):
    """experiments/benchmark.py's batch (same seed, same numbers) as NCHW torch tensors."""
    b = random_batch(batch_size, image_size, max_boxes, num_classes)
    return (torch.from_numpy(b['image']).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(b['boxes']),
            torch.from_numpy(np.maximum(b['labels'], 0)).long(), torch.from_numpy(b['mask']))


def load_config(path):
    spec = importlib.util.spec_from_file_location('preset', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def bench(args, cfg, channels_last):
    torch.manual_seed(0)
    m = cfg.model
    if m.backbone != 'resnet18':
        raise SystemExit(f'only resnet18 presets have a PyTorch twin here, not {m.backbone}')
    num_levels = len(m.levels) + len(m.extra_channels)
    ratios = level_ratios(m.aspect_ratios, num_levels)
    model = TorchSSD(args.num_classes, m.width, tuple(m.levels), tuple(m.extra_channels),
                     [2 + 2 * len(r) for r in ratios])
    images, boxes, labels, mask = torch_batch(args.batch_size, args.image_size, cfg.max_boxes, args.num_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        sizes = [tuple(s) for s in model(images[:1])[2]]
    anchors = torch.from_numpy(ssd_default_boxes(sizes, m.min_scale, m.max_scale, ratios))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.optimizer.weight_decay)

    def step():
        cls_t, box_t, pos, neg = targets(anchors, boxes, labels, mask)
        cls, box, _ = model(images)
        loss = ssd_loss(cls, box, cls_t, box_t, pos, neg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.clip_norm)
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    params = sum(p.numel() for p in model.parameters())
    return seconds, params, anchors.shape[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--config', default='experiments/configs/ssd_quick.py')
    p.add_argument('--image_size', type=int, default=None, help='default: the preset\'s')
    p.add_argument('--batch_size', type=int, default=None, help='default: the preset\'s')
    p.add_argument('--num_classes', type=int, default=6)
    p.add_argument('--threads', default='1,2', help='comma-separated torch thread counts to try')
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    args = p.parse_args()
    cfg = load_config(args.config)
    args.image_size = args.image_size or cfg.image_size
    args.batch_size = args.batch_size or cfg.batch_size
    for threads in map(int, args.threads.split(',')):
        torch.set_num_threads(threads)
        for channels_last in (False, True):
            seconds, params, num_anchors = bench(args, cfg, channels_last)
            layout = 'channels_last' if channels_last else 'contiguous (NCHW)'
            print(f'torch {torch.__version__} {layout}, {threads} threads: {args.batch_size / seconds:.1f} images/s '
                  f'({seconds * 1e3:.1f} ms/step), {params:,} parameters, {num_anchors} anchors, '
                  f'{args.image_size} px, batch {args.batch_size}', flush=True)


if __name__ == '__main__':
    main()
