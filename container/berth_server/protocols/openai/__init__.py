"""The OpenAI /v1 API: chat completions, completions and the model list."""
