"""Training: the one loop, optimisers and schedules, and training on several processes."""
