"""Serving: the registered champion behind a Ray Serve HTTP application.

- ``bertops.serving.app``: the Serve deployment (FastAPI ingress) and ``build_app`` for ``serve run`` / RayService.
- ``bertops.serving.schemas``: request/response bodies and the input checks (4xx with a message).
- ``bertops.serving.model_store``: loading, warming up and switching registered versions.
- ``bertops.serving.metrics``: Prometheus metrics at ``/metrics``.
- ``bertops.serving.client``: ``predict`` and ``notify_reload`` over HTTP (the CLI and the promotion step use it).
- ``bertops.serving.live``: a candidate version beside the champion on live traffic (shadow, canary);
  ``bertops.serving.live_client`` drives it over HTTP (the retrain's live-trial step uses it).

See docs/serving.md.
"""
