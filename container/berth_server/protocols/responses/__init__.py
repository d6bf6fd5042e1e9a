"""OpenAI Responses (/v1/responses): the API Codex and the OpenAI Agents SDK speak."""
