"""The wire-fault proxy breaks bodies the way networks do, as the real clients see them."""

from __future__ import annotations

import gzip

import pytest
import requests

from sandbox.mixpanel import DayWriter
from sandbox.wire import MODES, FaultyProxy


@pytest.fixture
def export(sandbox):
    """A day of Mixpanel events and a function that asks for the export through a proxy."""
    with DayWriter(sandbox) as w:
        for i in range(2000):
            w.write({"event": "E", "properties": {"time": 1791158400 + i, "distinct_id": f"u{i}",
                                                  "$insert_id": f"i{i}"}})  # fmt: skip
    creds = sandbox.credentials["mixpanel"]
    session = requests.Session()
    session.auth = (creds["username"], creds["secret"])
    params = {"project_id": creds["project_id"], "from_date": "2026-10-05", "to_date": "2026-10-05"}

    def get(base):
        return session.get(f"{base}/api/2.0/export", params=params, stream=True,
                           headers={"Accept-Encoding": "gzip"}, timeout=30)  # fmt: skip

    return get


def test_whole_bodies_pass_without_a_length(sandbox, export):
    direct = export(sandbox.base_url).raw.read(decode_content=False)
    with FaultyProxy(sandbox.base_url) as proxy:
        resp = export(proxy.url)
        assert "Content-Length" not in resp.headers and "Transfer-Encoding" not in resp.headers
        assert resp.headers["Connection"] == "close"
        assert resp.raw.read(decode_content=False) == direct
        assert len(gzip.decompress(direct).splitlines()) == 2000
        assert proxy.served == ["close"]


@pytest.mark.parametrize("mode", [m for m in MODES if m != "close"])
def test_each_cut_as_the_client_sees_it(sandbox, export, mode):
    direct = export(sandbox.base_url).raw.read(decode_content=False)
    with FaultyProxy(sandbox.base_url) as proxy:
        proxy.queue(mode, after=0.5)
        resp = export(proxy.url)
        assert resp.status_code == 200
        if mode == "close-cut":  # nothing in the transfer says so: only the gzip can tell
            body = resp.raw.read(decode_content=False)
            assert body == direct[: len(direct) // 2]
            with pytest.raises(EOFError):
                gzip.decompress(body)
        else:
            with pytest.raises(requests.exceptions.ChunkedEncodingError) as err:
                for _ in resp.iter_content(4096):
                    pass
            if mode == "reset":
                assert "reset" in str(err.value).lower()
        assert proxy.pending() == 0
        again = export(proxy.url).raw.read(decode_content=False)
        assert again == direct  # one answer broken, the next one whole


def test_errors_pass_untouched_and_keep_the_fault(sandbox, export):
    with FaultyProxy(sandbox.base_url) as proxy:
        proxy.queue("reset")
        sandbox.queue_fault("mixpanel", 429)
        resp = export(proxy.url)
        assert resp.status_code == 429 and "error" in resp.json()
        assert proxy.pending() == 1  # the fault waits for a 200


def test_unknown_mode_is_refused(sandbox):
    with FaultyProxy(sandbox.base_url) as proxy, pytest.raises(ValueError, match="close-cut"):
        proxy.queue("slow")
