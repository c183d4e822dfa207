"""GPU speed targets: `paper` preset, both stages, on a 512x512x390 volume.

    python benchmarks/gpu_benchmark.py            # on a machine with a CUDA GPU and PyTorch
    python benchmarks/gpu_benchmark.py --dry-run  # tiny sizes on the CPU, to check the script

Installs nothing and downloads nothing. Random weights (timing only). Runs the
same slice-wise cascade code as the server (lib.transforms.inference) with
bf16 autocast, channels-last and cudnn benchmark: stage one on every slice,
stage two on every slice (no ROI shortcut, the worst case), single scale (512)
and the paper's 5 scales (512..640). Reports seconds per volume and achieved
TFLOP/s against the card's measured dense bf16 matmul rate. Table printed last.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "liver_cascade"))

from lib.networks import build_network  # noqa: E402
from lib.settings import PRESETS  # noqa: E402
from lib.transforms.inference import predict_slices  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device, n=8192, iters=20):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.time()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n ** 3 * iters / (time.time() - t0) / 1e12


def flops_per_slice(net, size, in_channels, device):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, in_channels, size, size, device=device)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(x)
    return fc.get_total_flops()


def run_volume(nets, vol, scales, batch, device, amp):
    h, w, n = vol.shape
    sync(device)
    t0 = time.time()
    p1 = predict_slices(nets[0], lambda i: vol[..., i].permute(2, 0, 1)[:, None], n, (h, w), scales, batch,
                        device=device, amp=amp)
    liver = (p1[1].float() + p1[2].float()).clamp(0, 1)
    lesion = p1[2].float()
    p2 = predict_slices(nets[1], lambda i: torch.stack([vol[..., i], lesion[..., i], liver[..., i]]).permute(3, 0, 1, 2),
                        n, (h, w), scales, batch, device=device, amp=amp)
    p2.argmax(0)
    sync(device)
    return time.time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=390)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script only)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.dry_run:
        args.slices, args.size, args.preset, args.batch = 6, 64, "lite", 4
    amp = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    preset = PRESETS[args.preset]
    nets = [build_network("resnet", args.preset, c).to(device).eval().to(memory_format=torch.channels_last)
            for c in (1, 3)]
    if args.compile:
        nets = [torch.compile(n) for n in nets]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run)"
    peak = matmul_tflops(device, n=8192 if device.type == "cuda" else 512, iters=20 if device.type == "cuda" else 2)
    vol = torch.rand(args.size, args.size, args.slices, device=device)
    single = (args.size,) if not args.dry_run else (preset.base_size,)
    multi = tuple(s * args.size // preset.base_size for s in preset.all_scales) if not args.dry_run else preset.all_scales
    rows = []
    for scales in (single, multi):
        # warm-up on a full batch and the volume's last, shorter one: cudnn picks its kernels per shape
        run_volume(nets, vol[..., : min(args.slices, args.batch + args.slices % args.batch)], scales, args.batch,
                   device, amp)
        secs = run_volume(nets, vol, scales, args.batch, device, amp)
        flops = sum(flops_per_slice(n, s, c, device) for n, c in zip(nets, (1, 3)) for s in scales) * args.slices
        rows.append({"scales": list(scales), "seconds": round(secs, 2), "tflop": round(flops / 1e12, 1),
                     "tflops_achieved": round(flops / secs / 1e12, 1)})
        print(json.dumps(rows[-1]), flush=True)
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else 0.0
    print(f"\nliver_cascade GPU benchmark: {name}, torch {torch.__version__}, preset {args.preset}, "
          f"{args.size}x{args.size}x{args.slices}, both stages on every slice, bf16={amp}, compile={args.compile}")
    print(f"measured dense bf16 matmul: {peak:.1f} TFLOP/s; peak GPU memory {mem:.1f} GiB")
    print("| scales | seconds / volume | TFLOP | achieved TFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {','.join(map(str, r['scales']))} | {r['seconds']} | {r['tflop']} | {r['tflops_achieved']} | "
              f"{100 * r['tflops_achieved'] / peak:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
