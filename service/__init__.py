"""tapeserve: TensorFlow's GradientTape as a REST microservice."""

__version__ = "0.1.0"
