"""Hugging Face text-generation-inference (TGI) API: schemas, service and routes."""
