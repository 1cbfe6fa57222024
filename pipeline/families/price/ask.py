"""Serve the price champion's Bento for a moment and ask it for prices, as a shop's client would:
``python -m pipeline.families.price.ask [N]`` (what ``make demo`` ends with). Prints the request
(a ``curl`` line that works against ``shopml serve --model price``) and each item's answer."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    import httpx

    from pipeline.core.settings import get_state_paths
    from pipeline.serving.package import resolve_bento, served

    n = int((argv or sys.argv[1:] or ["3"])[0])
    paths = get_state_paths()
    tag = resolve_bento(paths, "price")
    with served(paths, tag, env={"SHOPML_PREDICTION_LOG": "off"}) as url, httpx.Client(timeout=30) as client:
        meta = client.post(f"{url}/metadata", json={}).json()
        # Of the sample, items with a recommendation first (most items of a short history sold at
        # one price, and get none): the demo shows both kinds of answer when it has both.
        first = client.post(f"{url}/price", json={"item_ids": meta["items_sample"]})
        first.raise_for_status()
        ranked = sorted(first.json()["prices"], key=lambda p: p["price"] is None)
        body = {"item_ids": [p["item_id"] for p in ranked[:n]]}
        print(f"price champion v{meta['version']} ({tag}): {meta['items']} items, forecasts from {meta['origin']}")
        print(
            'curl -s -X POST localhost:3000/price -H "authorization: Bearer $KEY" '
            f"-H 'content-type: application/json' -d '{json.dumps(body)}'"
        )
        answer = client.post(f"{url}/price", json=body)
        answer.raise_for_status()
        for p in answer.json()["prices"]:
            e = p.get("elasticity") or {}
            line = f"  {p['item_id']}: now {p['current_price']:g}"
            if p["price"] is not None:
                line += f", recommended {p['price']:g} (expected {p['expected_demand']:.2f} units a {meta['period']})"
            line += f"; elasticity {e.get('elasticity', float('nan')):.2f} [{e.get('low', float('nan')):.2f}, "
            line += f"{e.get('high', float('nan')):.2f}] ({e.get('source', 'none')}); {p['reason']}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
