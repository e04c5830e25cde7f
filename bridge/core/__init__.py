"""What every part builds on: errors, outcomes and results, items, settings, the clock, JSON,
masking, logs and metrics. It imports nothing else of the bridge."""
