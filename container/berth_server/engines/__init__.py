"""Engines: token-level generators behind one interface; adapters are imported lazily."""
