"""Training: the pure pmapped step, the loop, its step log, run control (lock, signals,
guards), settings checks and optimisers."""
