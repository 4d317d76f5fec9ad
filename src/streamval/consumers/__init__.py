"""The Kafka service: poll -> engine -> publish -> commit, with dead letters and checkpoints.

source.py       poll and parse; invalid messages to the DLQ
dlq.py          the dead-letter queue (original bytes plus headers saying why)
service.py      `ValuationService`: the consumer-group member's loop
checkpoint.py   engine state saved atomically with the offsets it reflects
warmup.py       learn from a history file before consuming
"""
