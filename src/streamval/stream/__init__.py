"""The event streams: contract, ordering, topics, local broker, replay, datasets."""
