"""Berth's server: launcher, model processes and the gevent frontend. Importing it loads nothing heavy."""

__version__ = "0.1.0"
