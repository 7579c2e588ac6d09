"""The ThingsBoard side of the gateway.

- :mod:`~gateway.upstream.thingsboard`: the MQTT device and gateway APIs as pure code (topics,
  payload packing, downlink parsing);
- :mod:`~gateway.upstream.session`: one MQTT connection (paho-mqtt on the asyncio loop, no network
  thread), reconnects, credentials, session limits;
- :mod:`~gateway.upstream.uplink`: outbox records to ThingsBoard, at least once, in order;
- :mod:`~gateway.upstream.downlink`: RPC and attribute traffic routed to the gateway's components.
"""
