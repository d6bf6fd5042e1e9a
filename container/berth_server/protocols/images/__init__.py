"""OpenAI's image-generation route."""
