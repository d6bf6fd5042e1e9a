"""Wire specifications both the SDK (`berth`) and the server (`berth_server`) import: neither imports the other."""
