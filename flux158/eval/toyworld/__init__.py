"""Toy-world evaluation: an exact detector whose detections feed GenEval's own rules."""
