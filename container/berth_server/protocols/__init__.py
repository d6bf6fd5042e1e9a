"""Wire protocols (OpenAI, TGI, SageMaker, Xinference): each a schemas + service + blueprint package."""
