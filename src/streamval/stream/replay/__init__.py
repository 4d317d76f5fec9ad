"""Replay history into Kafka: what happened, paced, with markers of real events and shocks.

producer.py    `replay(settings, table)`: an `EventTable` into the input topic
pacing.py      `Pacer`: events per second or event-time speed-up, without bursts
markers.py     dated real events (Fed changes, market shocks) published beside the data
scenarios.py   shocks applied to a table (shift, scale, volatility; step or ramp)
"""
