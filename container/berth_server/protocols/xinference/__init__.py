"""Xinference's management API (registrations, launch/terminate, describe) plus /v1/embeddings and /v1/rerank."""
