"""edge-gateway: a site's LwM2M server and bootstrap server, bridged to ThingsBoard over MQTT."""

__version__ = "0.1.0"
