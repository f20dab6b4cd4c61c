"""Between HTTP and compute: request models -> compute arguments, results -> bodies, errors -> HTTP locations."""
