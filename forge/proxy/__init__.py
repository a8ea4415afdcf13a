"""The proxy side: what one host that serves traffic does with the routing records.

``forge proxy`` (``daemon``) watches Apps, Instances and Nodes through the API (``records``) and
realizes them on its own host with one reconciler per concern (``reconcilers``): the host map on
disk that Caddy reads per request (``hostmap``), Caddy's one static config (``caddy``), the
kernel's service map (``servicemap``, over ``nft``) and the routes to other nodes' instance
subnets (``noderoutes``). What to route is computed by the pure functions of ``routing``, which
the API's ``/api/v1/tls/ask`` shares. The controllers decide; nothing here writes a record.
"""
