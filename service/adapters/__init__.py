"""Between HTTP and compute, one module per resource: request model -> compute arguments (a job), compute
result -> response body, compute errors -> HTTP locations (`errors.located`, the one place the "body"
prefix is added). Adapters import numpy and the codec, never TensorFlow at import time."""
