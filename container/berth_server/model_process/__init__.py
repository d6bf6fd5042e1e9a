"""The model process: one model's engine, text pipeline and ROUTER socket (`python -m berth_server.model_process`)."""
