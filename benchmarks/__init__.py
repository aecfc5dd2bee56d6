"""Benchmarks of MangaAssist Serve (`make bench`); results in benchmarks/results/."""
