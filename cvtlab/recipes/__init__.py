"""Named training recipes (YAML files of TrainConfig fields)."""
