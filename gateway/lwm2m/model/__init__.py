"""lwm2m/model."""
