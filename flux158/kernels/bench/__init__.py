"""`python -m flux158.kernels.bench`: every FLUX.1-dev linear shape x M, BF16 cuBLAS against the ternary kernels and the
unpack-to-scratch baselines, timed with `triton.testing.do_bench` (L2 flushed, weights rotated), to a CSV."""
