"""Models: launch configs, the built-in catalog, custom registrations and weight sources."""
