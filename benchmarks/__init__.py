"""Benchmarks that write reports into docs/results/ (`python -m benchmarks.run`)."""
