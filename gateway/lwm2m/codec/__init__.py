"""lwm2m/codec."""
