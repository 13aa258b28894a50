"""T2I-CompBench(++) evaluation (Karine-Huang/T2I-CompBench, paper-era commit 33d6305), implemented from the
protocol in `shared/reference/benchmarks.md` section 2, not copied (parts of the upstream code are non-commercial)."""
