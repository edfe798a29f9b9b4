from __future__ import annotations

import pytest

from warmroute.discovery.scrape import running_requests

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="llama"} 0.4
"""
SGLANG = "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 4\n"
TRITON = (
    "# TYPE nv_inference_pending_request_count gauge\n"
    'nv_inference_pending_request_count{model="a",version="1"} 1\n'
    'nv_inference_pending_request_count{model="b",version="1"} 2\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(VLLM, 5), (SGLANG, 4), (TRITON, 3), ("# nothing we know\nfoo 1\n", None), ("", None)],
)
def test_running_requests_from_known_servers(text: str, expected: int | None) -> None:
    assert running_requests(text) == expected
