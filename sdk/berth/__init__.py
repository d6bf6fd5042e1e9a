"""Berth's SDK: deploy the serving container, predict and stream, register custom models."""

__version__ = "0.1.0"
