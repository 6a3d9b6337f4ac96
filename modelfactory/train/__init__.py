"""The training loop: fit with checkpoints, resume and progress. It never knows which task it trains."""
