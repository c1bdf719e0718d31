"""torch's scaled_dot_product_attention at the shapes of bench_flash_attn (issue 20's peer for the
fused attention kernels): causal, bf16, (B, heads, T, hd), every SDPA backend torch offers here.

    python3 bench/e2e/sdpa_bench.py [--batch 8] [--seq 512] [--reps 30]

TFLOP/s are counted as bench_flash_attn counts them: forward 2 causal products, backward 5, each
2·hd·T·(T+1)/2 per (b, h). The backward is timed as (forward + backward) − forward.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def run(name, B, nh, nkv, T, hd, reps):
    print(f"\n{name}: B {B}, heads {nh}/{nkv}, hd {hd}, T {T}")
    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(B, nh, T, hd, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(B, nkv, T, hd, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(B, nkv, T, hd, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    do = torch.randn(B, nh, T, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    prod = 2.0 * hd * T * (T + 1) / 2 * B * nh
    print(f"  {'backend':<34} {'fwd ms':>9} {'TFLOP/s':>8} {'bwd ms':>9} {'TFLOP/s':>8}")
    for be in [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]:
        gqa = nkv != nh
        try:
            with sdpa_kernel([be]):
                def f():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

                def fb():
                    out = f()
                    torch.autograd.grad(out, (q, k, v), do)

                with torch.no_grad():
                    ms_f = timed(f, reps)
                ms_fb = timed(fb, reps)
        except Exception as e:  # a backend that refuses the shape says why
            print(f"  {be.name:<34} unavailable: {str(e).splitlines()[0][:90]}")
            continue
        ms_b = ms_fb - ms_f
        print(f"  {be.name:<34} {ms_f:9.4f} {2 * prod / ms_f / 1e9:8.1f} {ms_b:9.4f} {5 * prod / ms_b / 1e9:8.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--reps", type=int, default=30)
    a = p.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    run("LLaMA-2-7B attention", a.batch, 32, 32, a.seq, 128, a.reps)
    run("TinyLlama attention", a.batch, 32, 4, a.seq, 64, a.reps)


if __name__ == "__main__":
    main()
