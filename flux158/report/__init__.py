"""Tables and figures from the stages' metrics.json files (no Hydra, no W&B)."""
