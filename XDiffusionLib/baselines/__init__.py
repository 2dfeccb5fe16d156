"""Non-learned baselines with the model's interface (SliceInput in, Volume out)."""

BASELINES: dict = {}
