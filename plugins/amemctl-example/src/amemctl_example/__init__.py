"""An example amemctl plugin: the template to copy for your own stages."""

__version__ = "0.1.0"
