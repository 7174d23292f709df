"""The roles a layer can play, named in profiles and in a plan's groups (plain data, no torch)."""

ROLE_NAMES = ("front-end", "attention", "ffn", "conv", "norm", "head", "other")
