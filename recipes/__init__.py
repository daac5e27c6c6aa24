"""Training recipes: `accelerate launch recipes/run.py recipes/<dataset>.yaml` trains, evaluates and publishes."""
