"""Online learning: a classification bank learns from a stream (learner.py) through a pending pool (pool.py)."""
