"""Between HTTP and compute, one module per resource: request model -> compute arguments (a job), compute
result -> response document, compute locations -> HTTP locations (`errors.located`: the "body" prefix is
added there, once). Adapters import numpy and the codec, never TensorFlow at import time."""
