"""Kafka services: poll -> engine -> publish -> commit, with dead-lettering and checkpoints."""
