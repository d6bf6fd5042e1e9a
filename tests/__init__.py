"""Berth tests."""
