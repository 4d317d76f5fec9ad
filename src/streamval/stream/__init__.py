"""The event streams, split by concern (each sub-package imports only those listed before it):

contract/    what flows in and out: event schema and validation, per-asset ordering, the
             records of the output topics (valuations, drift alarms, snapshots)
kafka/       Kafka plumbing: client factories, topics, reading a topic back, the local broker
datasets/    event tables: file readers, the credit book generator, S&P 500, synthetic panels
replay/      history into Kafka: the paced producer, markers of real events, shock scenarios
"""
