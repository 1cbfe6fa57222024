"""Serve the fraud champion's Bento for a moment and score orders, as a checkout would:
``python -m pipeline.families.fraud.ask`` (what ``make demo`` ends with). Prints the request (a
``curl`` line that works against ``shopml serve --model fraud``) and each order's answer: a plain
order from a known user, then a burst of small orders from one new device with a new card each
(card testing), scored one after the other."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta


def main(argv: list[str] | None = None) -> int:
    import httpx

    from pipeline.core.settings import get_state_paths
    from pipeline.serving.package import resolve_bento, served

    paths = get_state_paths()
    tag = resolve_bento(paths, "fraud")
    with served(paths, tag, env={"SHOPML_PREDICTION_LOG": "off"}) as url, httpx.Client(timeout=30) as client:
        meta = client.post(f"{url}/metadata", json={}).json()
        at = datetime.fromisoformat(meta["features_as_of"]) + timedelta(hours=10)
        v, bands = meta["validation"], meta["bands"]
        print(
            f"fraud champion v{meta['version']} ({tag}, {meta['scorer']}): review from {bands['review_at']:.4g}, "
            f"block from {bands['block_at']:.4g}; on validation {v['reviews_per_day']:.1f} reviews a day "
            f"(budget {meta['policy']['review_budget_per_day']}), recall at the budget {v['recall_at_budget']:.2f}"
        )
        plain = {
            "order_id": "demo-1",
            "user_id": "u1",
            "order_time": at.isoformat(),
            "amount": 42.5,
            "currency": meta["currency"],
            "device_id": "d1",
            "country": "DE",
        }
        body = json.dumps({"orders": [plain]})
        print(
            'curl -s -X POST localhost:3000/score -H "authorization: Bearer $KEY" '
            f"-H 'content-type: application/json' -d '{body}'"
        )
        orders = [plain] + [
            {
                "order_id": f"demo-burst-{k}",
                "user_id": "u-burst",
                "order_time": (at + timedelta(minutes=2 * k)).isoformat(),
                "amount": 3.0,
                "device_id": "d-burst",
                "payment_id": f"card-{k}",
                "country": "NG",
            }
            for k in range(5)
        ]
        for order in orders:
            answer = client.post(f"{url}/score", json={"orders": [order]})
            answer.raise_for_status()
            (s,) = answer.json()["scores"]
            reasons = ", ".join(f"{r['feature']}={r['value']:g} ({r['contribution']:+.2f})" for r in s["reasons"])
            print(f"  {s['order_id']}: score {s['score']:.4f}, {s['band']}; top reasons: {reasons or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
