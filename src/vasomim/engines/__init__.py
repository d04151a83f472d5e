"""Training and evaluation engines: thin loops around the numeric core.

`vasomim.engines.common` holds what every trainer shares (distributed set-up, checkpoints, RNG
state, schedules, optimizer groups, logging).
"""
