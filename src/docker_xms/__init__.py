"""docker-xms: real-time media servers in containers."""

__version__ = "0.1.0"
