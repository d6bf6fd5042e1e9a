"""The HTTP frontend: a Flask app (gunicorn gevent workers) that never imports torch, transformers or vllm."""
