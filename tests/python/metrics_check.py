"""prometheus_client's own parser against a running gateway's /metrics, after one chat request.

Usage: python metrics_check.py BASE_URL   (e.g. http://127.0.0.1:8000). Exits non-zero on a
parse error or a breach of Prometheus's naming rules, printing it.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

base = sys.argv[1].rstrip("/")
body = json.dumps({"messages": [{"role": "user", "content": "metrics"}]}).encode()
request = urllib.request.Request(
    base + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
)
assert urllib.request.urlopen(request, timeout=30).status == 200
text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()

families = {}
for family in text_string_to_metric_families(text):  # raises on malformed text
    families[family.name] = family
    assert family.documentation, f"{family.name} has no HELP"
    assert family.type in ("counter", "gauge", "histogram"), (family.name, family.type)
    if family.type == "counter":
        # The parser strips `_total` from a counter's family name; every sample keeps it.
        for sample in family.samples:
            assert sample.name.endswith("_total"), f"counter sample {sample.name}"
    else:
        assert not family.name.endswith("_total"), f"{family.type} {family.name} ends in _total"
    if any(w in family.name for w in ("duration", "latency", "time")):
        assert family.name.endswith("_seconds"), f"{family.name}: a duration not in _seconds"

for name in (
    "gateway_requests",
    "gateway_request_duration_seconds",
    "gateway_keys",
    "gateway_request_upstream_attempts",
    "gateway_upstream_attempt_duration_seconds",
    "gateway_time_to_first_token_seconds",
    "gateway_stream_duration_seconds",
):
    assert name in families, f"no {name} in {sorted(families)}"
assert families["gateway_keys"].type == "gauge"
routes = {s.labels.get("route") for s in families["gateway_requests"].samples}
assert "/v1/chat/completions" in routes, routes
print("metrics ok:", len(families), "families")
