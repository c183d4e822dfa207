"""The GPU benchmark script runs end to end (tiny sizes on the CPU); timings are not checked here."""

import subprocess
import sys

from support import ROOT


def test_gpu_benchmark_dry_run():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_benchmark.py"), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.strip().splitlines()
    assert table[-3].startswith("|---") and len(table[-1].split("|")) == 7
