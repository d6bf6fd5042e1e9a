"""The frontend's client of the model processes and the launcher: gateway, streams, generations, per-app state."""
