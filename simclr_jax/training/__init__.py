"""Training: loop.py (train_and_evaluate, the loop), step.py (the pure pmapped step),
step_log.py (timers, metrics, progress, finite checks), run_control.py (lock, stops),
checkpoints.py (resume, save), settings.py (checks before anything runs), optim.py."""
