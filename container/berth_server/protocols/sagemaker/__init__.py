"""SageMaker hosting contract: /ping and shape-dispatched /invocations."""
