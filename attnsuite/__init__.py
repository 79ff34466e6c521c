"""The attnsuite command line: ``attnsuite list | check | bench | report``."""
