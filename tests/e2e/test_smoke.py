from __future__ import annotations

from tests.e2e.stack import MODEL, client, start_stack


async def test_one_request_reaches_a_warm_replica() -> None:
    stack = await start_stack(replicas=2)
    try:
        await stack.wait_warm()
        async with (
            client() as http,
            http.post(stack.url + "/v1/completions", headers={"x-model": MODEL}, json={}) as resp,
        ):
            body = await resp.json()
            assert resp.status == 200, body
        assert body["replica"] in [r.address for r in stack.replicas]
        await stack.wait_idle()
    finally:
        await stack.stop()
