"""The model-server signal parser against a real vLLM's recorded metrics
(tests/fixtures/vllm, see its README) and hand-written SGLang, TGI and Triton samples (each
says where its names and shape come from)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from warmroute.discovery.scrape import running_requests
from warmroute.discovery.signals import LoraSignals, ReplicaSignals, parse_signals

VLLM = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"


def vllm(name: str) -> ReplicaSignals:
    return parse_signals((VLLM / name).read_text())


# -- real vLLM 0.32.0 (recorded) ---------------------------------------------------------------


def test_a_fresh_vllm_with_lora_on_reports_no_adapter_and_no_max_yet() -> None:
    s = vllm("metrics-idle.txt")
    assert (s.server, s.running, s.waiting, s.kv_cache_usage) == ("vllm", 0, 0, 0.0)
    # The LoRA gauge is declared (LoRA is on) but has no sample before the first request.
    assert s.lora == LoraSignals(None, frozenset(), frozenset())
    assert s.in_flight == 0


def test_vllm_running_requests_and_the_adapters_they_use() -> None:
    s = vllm("metrics-running.txt")
    assert (s.running, s.waiting, s.in_flight) == (4, 0, 4)
    assert s.kv_cache_usage is not None and 0 < s.kv_cache_usage < 1
    assert s.lora is not None and s.lora.max_lora == 2
    assert s.lora.running_adapters == {"a0", "a1"}
    # vLLM 0.32 lists every adapter with a request in both labels.
    assert s.lora.waiting_adapters == {"a0", "a1"}


def test_vllm_requests_waiting_for_capacity() -> None:
    s = vllm("metrics-capacity-waiting.txt")
    assert (s.running, s.waiting, s.in_flight) == (4, 2, 6)
    assert s.lora is not None and s.lora.busy_adapters == {"a0"}


def test_a_vllm_request_waiting_for_a_lora_slot_is_counted_but_its_adapter_not_named() -> None:
    s = vllm("metrics-lora-deferred.txt")
    assert (s.running, s.waiting) == (2, 1)
    assert s.lora is not None and s.lora.max_lora == 2
    assert s.lora.busy_adapters == {"a0", "a1"}  # a2 waits and is not named (see README)


def test_the_newest_vllm_lora_label_set_is_current_whatever_its_place() -> None:
    s = vllm("metrics-after.txt")
    text = (VLLM / "metrics-after.txt").read_text()
    assert text.count("vllm:lora_requests_info{") == 3  # every set ever seen is still there
    assert (s.running, s.waiting) == (0, 0)
    assert s.lora == LoraSignals(2, frozenset(), frozenset())
    # Reversed lines: the same answer (the value, a timestamp, decides; not the order).
    lines = text.splitlines()
    body = [line for line in lines if not line.startswith("#")]
    head = [line for line in lines if line.startswith("#")]
    assert parse_signals("\n".join(head + body[::-1]) + "\n") == s


LORA = "# TYPE vllm:lora_requests_info gauge\n"


def test_adapter_lists_with_spaces_as_the_protocol_doc_writes_them() -> None:
    text = LORA + (
        'vllm:lora_requests_info{max_lora="8",running_lora_adapters="x, y",'
        'waiting_lora_adapters="z"} 1700000001.5\n'
        'vllm:lora_requests_info{max_lora="8",running_lora_adapters="old",'
        'waiting_lora_adapters=""} 1700000000.0\n'
    )
    lora = parse_signals(text).lora
    assert lora == LoraSignals(8, frozenset({"x", "y"}), frozenset({"z"}))
    assert lora.busy_adapters == {"x", "y", "z"}


def test_several_vllm_engines_are_summed_and_the_fullest_kv_cache_counts() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
    )
    s = parse_signals(text)
    assert (s.running, s.waiting, s.kv_cache_usage, s.lora) == (5, None, 0.75, None)


def test_an_older_vllm_kv_cache_name() -> None:
    text = '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.4\n'
    assert parse_signals(text).kv_cache_usage == 0.4


# -- SGLang: names and labels from python/sglang/srt/metrics/collector.py; the shape of its
# "Production Metrics" docs example (model_name label; per-rank labels on newer releases) --

SGLANG = """# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",dp_rank="0"} 7.0
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",dp_rank="1"} 5.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",dp_rank="0"} 2.0
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",dp_rank="1"} 0.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",dp_rank="0"} 0.28
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",dp_rank="1"} 0.31
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0075
"""
SGLANG_LORA = """# TYPE sglang:lora_pool_slots_used gauge
sglang:lora_pool_slots_used{model_name="m",tp_rank="0"} 3.0
# TYPE sglang:lora_pool_slots_total gauge
sglang:lora_pool_slots_total{model_name="m",tp_rank="0"} 4.0
"""


def test_sglang() -> None:
    s = parse_signals(SGLANG)
    assert (s.server, s.running, s.waiting, s.kv_cache_usage) == ("sglang", 12, 2, 0.31)
    assert s.lora is None and s.in_flight == 14


def test_sglang_lora_pool_counts_but_no_names() -> None:
    lora = parse_signals(SGLANG + SGLANG_LORA).lora
    assert lora == LoraSignals(max_lora=4, slots_used=3)
    assert lora.busy_adapters is None


# -- TGI: names from docs/source/reference/metrics.md; no labels on these gauges (the Rust
# metrics exporter's output). TGI publishes no KV-cache fraction. --------------------------

TGI = """# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 6
# TYPE tgi_queue_size gauge
tgi_queue_size 3
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 12000
"""


def test_tgi() -> None:
    s = parse_signals(TGI)
    assert (s.server, s.running, s.waiting, s.kv_cache_usage, s.lora) == ("tgi", 6, 3, None, None)


# -- Triton: nv_inference_pending_request_count from docs/user_guide/metrics.md (requests
# awaiting execution by a backend, per model and version); nv_trt_llm_* from the
# TensorRT-LLM backend's model.py create_metrics and its README's sample output. --------

TRITON_CORE = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="preprocessing",version="1"} 0
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 2
"""  # noqa: E501
TRITON_TRT = """# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 512
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 4
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 1
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 4096
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1024
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.25
"""  # noqa: E501


def test_triton_core_publishes_only_a_queue() -> None:
    s = parse_signals(TRITON_CORE)
    assert (s.server, s.running, s.waiting, s.kv_cache_usage) == ("triton", None, 2, None)
    assert s.in_flight == 2


def test_triton_with_the_tensorrt_llm_backend() -> None:
    s = parse_signals(TRITON_CORE + TRITON_TRT)
    # active (every request holding a place) is running; pending + the executor's queue wait
    assert (s.running, s.waiting, s.kv_cache_usage) == (4, 3, 0.25)


# -- what the parser ignores, and what it refuses ---------------------------------------------


def test_nothing_known_is_no_signal_at_all() -> None:
    s = parse_signals("# TYPE foo gauge\nfoo 1\n")
    assert s == ReplicaSignals()
    assert s.in_flight is None and parse_signals("") == ReplicaSignals()


def test_nan_samples_are_ignored() -> None:
    text = "# TYPE tgi_queue_size gauge\ntgi_queue_size NaN\n# TYPE tgi_batch_current_size gauge\n"
    text += "tgi_batch_current_size 2\n"
    s = parse_signals(text)
    assert (s.running, s.waiting) == (2, None)
    assert not math.isnan(s.in_flight or 0)


def test_lines_of_other_metrics_are_never_parsed() -> None:
    text = "this is { not exposition\n# TYPE vllm:num_requests_running gauge\n"
    text += 'vllm:num_requests_running{engine="0"} 1\n'
    assert parse_signals(text).running == 1


def test_a_broken_line_of_a_metric_read_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_signals('vllm:num_requests_running{engine="0" 1\n')


# -- the scraper's external load is the parser's in_flight --------------------------------------


@pytest.mark.parametrize(
    "name", ["metrics-idle.txt", "metrics-running.txt", "metrics-capacity-waiting.txt"]
)
def test_external_load_is_running_plus_waiting(name: str) -> None:
    s = vllm(name)
    assert running_requests((VLLM / name).read_text()) == s.in_flight
    assert s.in_flight == (s.running or 0) + (s.waiting or 0)
