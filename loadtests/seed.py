"""Seed a running loragate for load tests: N tenants, alias `chat`, a canary in progress; writes
their keys in the `.loragate/demo.json` shape that `loadtests/locustfile.py` reads.

Against engines that are the in-repo mock, omit --adapter: small valid artifacts are generated in
the store. Against real engines, pass existing adapter directories (relative to the store) with
--adapter, e.g. the demo's `acme/triage-v1` and `blackbeard/pirate-v1`.

    python -m loadtests.seed --url http://127.0.0.1:8000 --admin-token "$TOKEN" \\
        --store .loragate/adapters --base-model smollm2-135m-instruct \\
        --adapter acme/triage-v1 --adapter blackbeard/pirate-v1 --tenants 20 --out keys.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loadtests import stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--store", type=Path, required=True, help="the gateway's adapter store")
    parser.add_argument("--base-model", default=stack.BASE_MODEL)
    parser.add_argument("--adapter", action="append", default=None, help="path under --store")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--canary-weight", type=float, default=0.2)
    parser.add_argument("--prefix", default="lt", help="tenant id prefix (ids must be new)")
    parser.add_argument("--out", type=Path, default=Path("loadtest-keys.json"))
    args = parser.parse_args(argv)
    store = args.store.resolve()
    adapters = [store / a for a in args.adapter] if args.adapter else None
    tenants = stack.seed_loragate(
        args.url,
        args.admin_token,
        store=store,
        tenants=args.tenants,
        canary_weight=args.canary_weight,
        base_model=args.base_model,
        adapters=adapters,
        prefix=args.prefix,
    )
    doc = {"gateway_url": args.url, "tenants": tenants}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.out.chmod(0o600)
    print(f"seeded {len(tenants)} tenants; keys in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
