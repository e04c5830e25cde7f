"""Dub: its endpoints and field rules, described once, and the HTTP client."""
