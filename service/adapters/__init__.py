"""Per resource: request model -> compute arguments, compute result -> response body, compute locations ->
HTTP locations (the "body" prefix is added here, once)."""
