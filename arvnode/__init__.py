"""arvnode: an Arvados-compatible gateway node on Twisted."""

__version__ = "0.1.0"
