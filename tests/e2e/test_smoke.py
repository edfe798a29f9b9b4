from __future__ import annotations

from tests.e2e.stack import MODEL, StackFactory, client


async def test_one_request_reaches_a_warm_replica(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=2)
    await stack.wait_warm()
    async with (
        client() as http,
        http.post(stack.url + "/v1/completions", headers={"x-model": MODEL}, json={}) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
    assert body["replica"] in [r.address for r in stack.replicas]
    await stack.wait_idle()
