"""schemathesis (a client nobody here wrote) fuzzing pih2t-serve from its own /openapi.json on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from tests.servers import running_server


def test_schemathesis_finds_no_server_error(digits_artifact, tmp_path):
    """Every operation of the schema, positive and negative data, seeded: no answer is a 5xx."""
    st = os.path.join(os.path.dirname(sys.executable), "st")
    app = create_app(lambda: load_classifier(digits_artifact[1]), ServeSettings())
    with running_server(app) as (url, _server):
        done = subprocess.run(
            [
                st, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "40",
                "--seed", "1", "--workers", "1", "--no-color", "--report-dir", str(tmp_path),
            ],
            capture_output=True, text=True, timeout=600, env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
