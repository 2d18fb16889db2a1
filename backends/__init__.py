"""Array backends (numpy, torch) so the core numerics are written once."""
