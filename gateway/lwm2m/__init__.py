"""LwM2M: the gateway as the site's LwM2M server (and, later, bootstrap server).

- :mod:`gateway.lwm2m.path`, :mod:`gateway.lwm2m.node`: paths and values;
- :mod:`gateway.lwm2m.model`: object models (built-in core and IPSO objects, OMA DDF XML files);
- :mod:`gateway.lwm2m.codec`, :mod:`gateway.lwm2m.linkformat`: every content format, pure functions;
- :mod:`gateway.lwm2m.server`: the server itself -- registrations, device management, observation,
  queue mode, Send -- behind a small typed API (:class:`gateway.lwm2m.server.LwM2mServer`).
"""
