"""The load generator's parts, shared by scripts/loadtest.py and scripts/bench/."""
