"""The Ollama API (/api/*): chat, generate, embeddings and the model list, for tools that only speak Ollama."""
