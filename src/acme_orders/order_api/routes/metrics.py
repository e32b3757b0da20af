"""GET /metrics: the API process's metrics, for Prometheus.

It needs a metrics key (what Prometheus scrapes with: it reads nothing else) or an admin key;
anyone, with AUTH_DISABLED. Not an orders:write key: the figures say how busy the whole shop is.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from acme_orders.order_api.deps import MetricsScraper
from acme_orders.order_api.responses import problems

metrics = APIRouter(prefix="/metrics", tags=["metrics"])


@metrics.get(
    "",
    response_class=Response,
    responses={
        200: {
            "description": "Every metric of this API process, in Prometheus' text format (or "
            "OpenMetrics, when the Accept header asks for it).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **problems(
            401,
            403,
            503,
            saying={403: "The API key's scope is neither metrics nor admin."},
        ),
    },
)
async def export_metrics(request: Request, _caller: MetricsScraper) -> Response:
    """The API process's metrics for Prometheus: request latency by route and status, the
    OrderPlaced events it wrote, and the process' own (CPU, memory, open files). Needs a
    metrics or an admin key. Each worker serves its own on its metrics port."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), media_type=content_type)
