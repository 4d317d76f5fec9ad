"""Kafka plumbing: clients built from settings, topics, reading a topic back, the local broker.

clients.py   `make_producer`, `make_consumer` (project defaults), `check_reachable`
topics.py    `ensure_topics` (idempotent creation), `describe`, `topic_names`
reader.py    `read_topic`: a topic from the beginning, outside any group (reports, tests)
broker.py    `LocalBroker`: a single-node KRaft broker for development, tests and the demo
jars.py      Java and the Kafka jars from Maven Central for the local broker
"""
