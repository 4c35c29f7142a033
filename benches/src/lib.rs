//! Benchmarks live here as they are built (see the benchmark issue).
