"""Pydantic models of every request and response body (the shape of the JSON, nothing else)."""
