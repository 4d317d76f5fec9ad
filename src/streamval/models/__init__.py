"""Models: clustering of assets, per-cluster online learners, drift-adaptive learning rate, baselines."""
