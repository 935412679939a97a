"""``pih2t-triton infer``: classify image files through a Triton server (or pih2t-serve) with tritonclient.

Encoded image bytes go to the ensemble's ``image`` input (BYTES); the classification extension returns the
top-k as ``value:index:label``. One client per call (the HTTP client is not thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pih2t_deploy.errors import UserError


@dataclass
class Ranked:
    """One entry of an image's top-k."""

    label: str
    index: int
    value: float


def _parse(entry: bytes | str) -> Ranked:
    text = entry.decode() if isinstance(entry, bytes) else entry
    value, index, label = text.split(":", 2)
    return Ranked(label=label, index=int(index), value=float(value))


def classify_files(
    url: str, images: list[Path], *, model: str, top_k: int = 5, protocol: str = "http"
) -> list[list[Ranked]]:
    """Top-k for each image file, in order; UserError for unreadable files or an unreachable server."""
    blobs = []
    for path in images:
        if not path.is_file():
            raise UserError(f"image {path} does not exist")
        blobs.append(path.read_bytes())
    if protocol == "http":
        import tritonclient.http as client_module
    elif protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        raise UserError(f"--protocol must be http or grpc, got {protocol!r}")
    from tritonclient.utils import InferenceServerException

    client = client_module.InferenceServerClient(url)
    try:
        data = np.array(blobs, dtype=object).reshape(-1, 1)
        request = client_module.InferInput("image", list(data.shape), "BYTES")
        request.set_data_from_numpy(data)
        wanted = [client_module.InferRequestedOutput("logits", class_count=top_k)]
        result = client.infer(model, [request], outputs=wanted)
        rows = result.as_numpy("logits").reshape(len(blobs), -1)
    except InferenceServerException as exc:
        raise UserError(f"{url}: {exc.message()}") from None
    except (ConnectionError, OSError) as exc:
        raise UserError(f"cannot reach {url}: {exc}") from None
    finally:
        client.close()
    return [[_parse(entry) for entry in row] for row in rows]
