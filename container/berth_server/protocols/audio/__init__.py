"""OpenAI's audio routes: transcriptions, translations, speech and voices."""
