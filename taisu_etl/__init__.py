"""taisu-etl."""
__version__ = "0.1.0"
