"""Slice-wise, multi-scale inference of the 2D FCNs on a 3D volume.

Every axial slice (last axis after ``Orientationd("RAS")``) is resized so its
longer side equals each test-time scale, run through the network in batches,
and the softmax probabilities are resized back to the slice's own size and
averaged over scales (the paper's multi-scale fusion; one scale is
single-scale). Probabilities are kept in float16 to bound memory. With a
``box``, only that in-plane box of each slice is resized and run (stage two
on the liver's box); the rest of ``out`` keeps its values. ``adapt_batchnorm``
re-estimates a network's batch-norm statistics on the volume's own slices
before it runs (test-time adaptation).
"""

import copy
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def class_probs(liver: Tensor, lesion: Tensor) -> Tensor:
    """(background, liver, lesion) probabilities from whole-liver and lesion maps (lesion within liver)."""
    liver, lesion = liver.float(), lesion.float()
    return torch.stack([1 - liver, liver - lesion, lesion]).clamp(0, 1)


def within_liver(probs: Tensor, liver: Tensor) -> Tensor:
    """(background, liver, lesion) probabilities when the liver is known (an annotator's mask):
    background outside it; inside it, lesion share p(lesion) / (p(lesion) + max(p(background), p(liver))),
    so a voxel of the mask is lesion exactly where the network's own argmax is lesion. (The lesion
    share against the liver alone, p(lesion) / (p(lesion) + p(liver)), drew 24 false lesions where the
    network saw background at the border of a real patient's liver; docs/RESULTS.md.)"""
    inside = liver > 0.5
    p0, p1, p2 = (probs[c].float() for c in range(3))
    return class_probs(inside, p2 / (p2 + torch.maximum(p0, p1)).clamp_min(1e-6) * inside)


def scaled_size(shape, scale: int):
    """(h, w) resized so that max(h, w) == scale, aspect ratio kept."""
    h, w = shape
    f = scale / max(h, w)
    return max(8, int(round(h * f))), max(8, int(round(w * f)))


@torch.inference_mode()
def adapt_batchnorm(
    network: torch.nn.Module,
    make_input: Callable[[Sequence[int]], Tensor],
    indices: Sequence[int],
    slice_shape,
    scales: Sequence[int],
    batch_size: int,
    max_slices: int,
    device: torch.device = torch.device("cpu"),
    amp: bool = False,
    box: Optional[Tuple[int, int, int, int]] = None,
) -> torch.nn.Module:
    """A copy of ``network`` whose batch-norm statistics are those of these slices (AdaBN).

    The slices are the ones ``predict_slices`` would run (``indices``, cropped to ``box``, resized to
    each scale), at most ``max_slices`` of them evenly spread; each batch takes every k-th of them, so
    that it spans the volume as a training batch (slices of one volume) did. Running mean and variance
    become the average of the batches' statistics. ``network`` itself (shared by the server's
    requests) is not touched; a network without batch norm is returned as is."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    indices = list(indices)
    if not norms or not indices:
        return network
    if len(indices) > max_slices:
        indices = [indices[round(i * (len(indices) - 1) / (max_slices - 1))] for i in range(max_slices)]
    net = copy.deepcopy(network)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
            m.train()
    x0, x1, y0, y1 = box if box is not None else (0, slice_shape[0], 0, slice_shape[1])
    n_batches = math.ceil(len(indices) / batch_size)
    for b in range(n_batches):
        x = make_input(indices[b::n_batches])[:, :, x0:x1, y0:y1].to(device)
        for s in scales:
            size = scaled_size((x1 - x0, y1 - y0), s)
            xs = x if size == tuple(x.shape[-2:]) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                net(xs.contiguous(memory_format=torch.channels_last))
    return net.eval()


@torch.inference_mode()
def predict_slices(
    network: Callable[[Tensor], Tensor],
    make_input: Callable[[Sequence[int]], Tensor],
    n_slices: int,
    slice_shape,
    scales: Sequence[int],
    batch_size: int = 16,
    indices: Optional[Sequence[int]] = None,
    out: Optional[Tensor] = None,
    device: torch.device = torch.device("cpu"),
    amp: bool = False,
    box: Optional[Tuple[int, int, int, int]] = None,
) -> Tensor:
    """Run ``network`` on axial slices; returns (classes, H, W, n_slices) float16.

    ``make_input(idx)`` returns the (len(idx), C, H, W) float32 network input
    for those slice indices; ``indices`` restricts the run to some slices
    (``out`` keeps the values of the others), ``box`` = (x0, x1, y0, y1) to
    the in-plane box of each slice (``out`` is then required).
    """
    indices = list(range(n_slices)) if indices is None else list(indices)
    full = tuple(slice_shape)
    if box is not None and out is None:
        raise ValueError("predict_slices: a box needs the output volume it is written into")
    x0, x1, y0, y1 = box if box is not None else (0, full[0], 0, full[1])
    h, w = x1 - x0, y1 - y0
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x = make_input(idx)[:, :, x0:x1, y0:y1].to(device, non_blocking=True)
        acc = None
        for s in scales:
            size = scaled_size((h, w), s)
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            xs = xs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = network(xs)
            p = torch.softmax(logits.float(), 1)
            if size != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            acc = p if acc is None else acc + p
        acc = (acc / len(scales)).to(torch.float16)
        if out is None:
            out = torch.zeros((acc.shape[1], h, w, n_slices), dtype=torch.float16, device=acc.device)
        out[:, x0:x1, y0:y1, idx] = acc.permute(1, 2, 3, 0).to(out.device)
    if out is None:  # no slice to run
        raise ValueError("predict_slices: nothing to predict")
    return out
