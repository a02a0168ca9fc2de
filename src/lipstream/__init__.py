"""lipstream: a real-time lip-sync avatar server built on StyleSync."""

__version__ = "0.1.0"
