"""Benchmarks for souverix-crdt: every figure is a ratio against a baseline run in-process."""
