"""Start pih2t-serve on an artifact, classify images through the REST API, print the answers, stop it.

Used by ``make quickstart``; exits non-zero if the server does not become ready or a request fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx

from pih2t_deploy.serving.process import free_port, start_rest_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"$ pih2t-serve --model {args.model} --port {port}", flush=True)
    server = start_rest_server(args.model, port)
    try:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in args.images]
        print(f"$ curl -F files=@{args.images[0].name} ... '{url}/v1/classify?top_k=3'", flush=True)
        answer = httpx.post(f"{url}/v1/classify", params={"top_k": 3}, files=files, timeout=30.0)
        answer.raise_for_status()
        body = answer.json()
        correct = 0
        for result in body["results"]:
            best = result["predictions"][0]
            expected = result["filename"].removeprefix("digit_").removesuffix(".png")
            correct += best["label"] == expected
            print(f"  {result['filename']:<12} -> {best['label']} ({best['score']:.1%})")
        print(f"{correct}/{len(body['results'])} sample images classified correctly by model {body['model']}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
