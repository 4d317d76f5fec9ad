"""The event streams: the event contract, ordering, topics, the local broker, replay and datasets."""
