"""Pure TensorFlow computations: numpy arrays and plain values in, numpy arrays out.

Nothing here knows about HTTP, FastAPI or pydantic; errors are the plain exceptions of
`service.compute.errors`, which the worker maps onto the service's problem types.
"""
