"""modelfactory: one shared platform that turns small customer orders into small, fast, served models."""

__version__ = "0.1.0"
