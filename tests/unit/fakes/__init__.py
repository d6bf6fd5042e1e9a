"""Stand-in processes for unit tests."""
