"""Performance benchmarks (`make bench`): each `bench_*.py` has `main(out_dir) -> dict`, results as JSON."""
