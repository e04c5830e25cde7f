"""Segment -> Dub bridge: Segment track events in, Dub lead and sale conversions out."""

__version__ = "0.1.0"
