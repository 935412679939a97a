"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

from pih2t_deploy.models import PIH2TNet
from tests.helpers import make_net

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture
def digits_net() -> PIH2TNet:
    return make_net("digits_net", method="pih2t", lws=True)
