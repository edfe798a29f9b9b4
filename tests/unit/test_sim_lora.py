"""The simulated replica's LoRA book (``warmroute.sim.lora``): pure, on a fake clock.

Each rule is vLLM 0.32's (cited in the module's docstring): which names a request may use,
``max_loras`` adapters in the running batch with waiting requests skipped past, the LRU cache
of loaded adapters and its load time, and the load/unload endpoints' checks and messages.
"""

from __future__ import annotations

import pytest

from warmroute.sim.lora import LoraBook, LoraConfig, LoraError, LoraModule, parse_module


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book(
    max_loras: int = 1,
    modules: tuple[str, ...] = ("a", "b"),
    cpu: int | None = None,
    load_s: float = 0.5,
) -> tuple[LoraBook, Clock]:
    clock = Clock()
    config = LoraConfig(
        max_loras=max_loras,
        max_cpu_loras=cpu,
        load_s=load_s,
        modules=tuple(LoraModule(m, f"/loras/{m}") for m in modules),
    )
    return LoraBook(config, "base", clock), clock


def test_a_request_names_a_base_model_or_a_known_adapter_else_404() -> None:
    b, _ = book()
    assert b.check_model("base", ["base", "alias"]) is None
    assert b.check_model("alias", ["base", "alias"]) is None
    assert b.check_model("a", ["base"]) == "a"
    with pytest.raises(LoraError) as info:
        b.check_model("nope", ["base", "alias"])
    assert info.value.status == 404
    assert info.value.body() == {
        "error": {
            "message": "The model `nope` does not exist. Valid aliases: base, alias.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_static_modules_are_known_and_resident_without_a_load() -> None:
    b, clock = book(max_loras=2, modules=("a", "b"))
    assert b.known() == {"a": "/loras/a", "b": "/loras/b"}
    assert b.resident() == ("a", "b")
    t = b.request("a")
    assert t.started and t.ready_at == clock.now
    assert b.loads == 0


def test_more_static_modules_than_the_cache_keep_the_last_ones_resident() -> None:
    b, _ = book(max_loras=2, modules=("a", "b", "c"))
    assert b.resident() == ("b", "c")
    assert list(b.known()) == ["a", "b", "c"]


def test_requests_beyond_max_loras_wait_and_later_ones_that_fit_skip_ahead() -> None:
    b, _ = book(max_loras=1, modules=("a", "b"), cpu=2)
    a1 = b.request("a")
    b1 = b.request("b")  # a second adapter: over max_loras 1
    a2 = b.request("a")  # fits: its adapter is running
    assert (a1.started, b1.started, a2.started) == (True, False, True)
    assert b.running_adapters() == ("a",) and b.waiting_adapters() == ("b",)
    assert b.waiting == 1
    assert b.finish(a1) == []  # a2 still runs a
    assert b.finish(a2) == [b1]  # a is idle: b fits
    assert b1.started and b.running_adapters() == ("b",) and b.waiting == 0


def test_a_waiting_request_that_leaves_is_forgotten() -> None:
    b, _ = book(max_loras=1)
    a1, b1 = b.request("a"), b.request("b")
    assert b.finish(b1) == []
    assert b.waiting_adapters() == () and b.waiting == 0
    assert b.finish(a1) == [] and b.running_adapters() == ()
    assert b.finish(a1) == []  # twice is harmless


def test_adapter_order_in_the_metric_labels_is_first_request_first() -> None:
    b, _ = book(max_loras=2, modules=("a", "b", "c"), cpu=3)
    tb, ta, tc = b.request("b"), b.request("a"), b.request("c")
    assert b.running_adapters() == ("b", "a") and b.waiting_adapters() == ("c",)
    b.finish(tb)
    assert tc.started and b.running_adapters() == ("a", "c")
    b.finish(ta)
    b.finish(tc)
    assert b.running_adapters() == () and b.waiting_adapters() == ()


def test_an_evicted_adapter_is_loaded_again_when_used_and_its_requests_wait_for_it() -> None:
    b, clock = book(max_loras=1, modules=("a", "b"), load_s=0.5)  # cache holds 1: b
    assert b.resident() == ("b",)
    t1 = b.request("a")
    assert t1.started and t1.ready_at == clock.now + 0.5 and b.loads == 1
    assert b.resident() == ("a",)  # b was idle: evicted
    clock.now += 0.2
    t2 = b.request("a")  # the same load, not another
    assert t2.ready_at == t1.ready_at and b.loads == 1
    clock.now += 1
    b.finish(t1)
    b.finish(t2)
    t3 = b.request("a")
    assert t3.ready_at == clock.now and b.loads == 1  # still resident: no load


def test_the_least_recently_used_idle_adapter_is_evicted() -> None:
    b, _ = book(max_loras=2, modules=("a", "b"), cpu=2)
    ta = b.request("a")  # a is used (most recent) and running
    b.finish(b.request("b"))  # b used after a, now idle
    b.finish(ta)
    tb = b.request("b")  # b most recent, running; a idle and least recent
    tc_book = b.begin_load("c", "/loras/c")
    assert tc_book > 0 and b.resident() == ("b", "c")
    b.end_load("c", "/loras/c", ok=True)
    b.finish(tb)


def test_a_running_adapter_is_not_evicted_the_cache_runs_over_instead() -> None:
    b, _ = book(max_loras=1, modules=("a",), cpu=1)
    ta = b.request("a")
    b.begin_load("c", "/loras/c")
    b.end_load("c", "/loras/c", ok=True)
    assert set(b.resident()) == {"a", "c"}  # over capacity while a runs
    b.finish(ta)
    assert b.resident() == ("c",)


def test_load_checks_and_messages_are_vllms() -> None:
    b, clock = book(modules=("a",))

    def refused(*args: object, **kwargs: bool) -> tuple[int, str, str]:
        with pytest.raises(LoraError) as info:
            b.begin_load(*args, **kwargs)
        return info.value.status, info.value.type, str(info.value)

    both = "Both 'lora_name' and 'lora_path' must be provided."
    assert refused("", "/p") == (400, "InvalidUserInput", both)
    assert refused("x", "") == (400, "InvalidUserInput", both)
    assert refused("base", "/p") == (
        400, "InvalidUserInput", "The lora adapter 'base' conflicts with a served base model."
    )  # fmt: skip
    assert refused("a", "/p") == (
        400,
        "InvalidUserInput",
        "The lora adapter 'a' has already been loaded. If you want to load the adapter in "
        "place, set 'load_inplace' to True.",
    )
    ready = b.begin_load("a", "/new", inplace=True)
    assert ready == clock.now + 0.5
    b.end_load("a", "/new", ok=True)
    assert b.known()["a"] == "/new"


def test_a_loading_adapter_is_unknown_until_its_load_ends() -> None:
    b, _ = book(modules=())
    b.begin_load("x", "/loras/x")
    with pytest.raises(LoraError):
        b.check_model("x", ["base"])
    with pytest.raises(LoraError) as info:
        b.begin_load("x", "/loras/x")  # a second load while the first runs
    assert info.value.status == 400
    b.end_load("x", "/loras/x", ok=True)
    assert b.check_model("x", ["base"]) == "x"
    assert b.loads == 1


def test_a_failed_load_leaves_nothing_behind() -> None:
    b, _ = book(modules=())
    b.begin_load("x", "/missing")
    b.end_load("x", "/missing", ok=False)
    assert b.known() == {} and b.resident() == ()


def test_unload_checks_and_effect() -> None:
    b, _ = book(modules=("a",))
    with pytest.raises(LoraError) as info:
        b.unload("zz")
    assert (info.value.status, str(info.value)) == (404, "The lora adapter 'zz' cannot be found.")
    with pytest.raises(LoraError) as info:
        b.unload("")
    assert info.value.status == 400
    t = b.request("a")
    b.unload("a")
    assert "a" not in b.known() and b.resident() == ("a",)  # its request still runs
    with pytest.raises(LoraError):
        b.check_model("a", ["base"])
    b.finish(t)


def test_model_cards_name_the_parent_and_the_path() -> None:
    b, _ = book(modules=("a",))
    (card,) = b.model_cards(5)
    assert card["id"] == "a" and card["parent"] == "base" and card["root"] == "/loras/a"
    assert card["owned_by"] == "vllm" and card["object"] == "model"


def test_module_forms_and_config_checks() -> None:
    assert parse_module("x=/p/x") == LoraModule("x", "/p/x")
    assert parse_module('{"name": "x", "path": "/p"}') == LoraModule("x", "/p")
    for bad in ("x", "=p", "x=", '{"name": "x"}', "{nope", "[1]"):
        with pytest.raises(ValueError):
            parse_module(bad)
    with pytest.raises(ValueError, match="max_cpu_loras"):
        LoraConfig(max_loras=2, max_cpu_loras=1)
    with pytest.raises(ValueError):
        LoraConfig(max_loras=0)
    with pytest.raises(ValueError, match="repeat"):
        LoraConfig(modules=(LoraModule("a", "/1"), LoraModule("a", "/2")))
    assert LoraConfig(max_loras=3).capacity == 3
