"""Routing: choosing which tasks' modules answer a text from statistics of each task's features
(statistics.py), an index over all tasks (index.py) and the router methods that score it (methods.py)."""
