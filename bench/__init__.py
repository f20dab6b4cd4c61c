"""The benchmark harness: tapeserve side by side with a no-TensorFlow FastAPI reference (`make bench`)."""
