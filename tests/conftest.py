"""Fixtures shared by the test modules that need a real S3 API server (moto on loopback)."""

from __future__ import annotations

import uuid

import pytest

from s3server import S3Server


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A fresh bucket, with the environment a pod gets from its Secret (and a short retry budget)."""
    for key, value in {"SICOG_S3_ENDPOINT": s3_server.endpoint, "AWS_ACCESS_KEY_ID": "sicog-test",
                       "AWS_SECRET_ACCESS_KEY": "sicog-test-secret", "AWS_REGION": "us-east-1",
                       "SICOG_S3_RETRY_SECONDS": "20"}.items():
        monkeypatch.setenv(key, value)
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().make_bucket(name)
    return name
