"""Mapping files: their format, loading and checking, and the pure engine that applies them."""
