"""Benchmark of issue 4: mapping throughput, webhook throughput and latency, memory, start-up."""
