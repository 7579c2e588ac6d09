"""lwm2m."""
