"""Served models in pure TensorFlow: loading (defensively), signatures, and the verbs predict, gradients and
jacobian as a worker engine. `spec` holds the plain (TensorFlow-free) descriptions and jobs the HTTP side builds."""
