"""The Kafka service: poll -> engine -> publish -> commit, with dead letters and checkpoints.

records.py      input and output records as data; dead-letter copies (truncated when too large)
batch.py        the pure batch logic: records in; valuations, dead letters, offsets out
order.py        event-time order across partitions (merge, hold back the ones ahead)
delivery.py     `Delivery`: flush outputs (every send checked), commit offsets, checkpoint
outage.py       broker outages: retry with backoff up to a bound, then stop clearly
checkpoint.py   the checkpoint format (data only, checksummed) and its background writer
recovery.py     restore a checkpoint, re-read from its offsets, publish nothing twice
service.py      `ValuationService`: the thin Kafka loop
warmup.py       learn from a history file before consuming
"""
