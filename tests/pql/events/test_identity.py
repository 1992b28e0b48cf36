"""Identity: anonymous activity joins the user once identified; emails come from profiles."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import requests

from pql import config, pipeline
from pql.lake import Lake
from pql.scoring.features import user_features
from sandbox.mixpanel import DayWriter, upsert_profiles

DAY = date(2026, 10, 5)


def _line(name, distinct_id, hour, insert_id, **props):
    t = int(datetime(2026, 10, 5, hour, tzinfo=UTC).timestamp())
    return {
        "event": name,
        "properties": {"time": t, "distinct_id": distinct_id, "$insert_id": insert_id, **props},
    }


def test_anonymous_events_and_profile_emails_join_the_user(sandbox, tmp_path):
    with DayWriter(sandbox) as w:
        w.write(_line("Pricing Page Viewed", "$device:dev1", 8, "a", **{"$device_id": "dev1"}))
        w.write(_line("Pricing Page Viewed", "$device:dev9", 8, "b", **{"$device_id": "dev9"}))
        # The identify: the event that carries both ids merges the device into the user.
        w.write(_line("Signed Up", "u1", 9, "c", **{"$device_id": "dev1", "$user_id": "u1"}))
        w.write(_line("Signed Up", "u2", 9, "d", email="Bo@Beta.dev"))
    upsert_profiles(sandbox, [("u1", {"$email": "Ana@Acme.io"}), ("u2", {"$email": "x@y.z"})])
    cfg = config.load().model_copy(update={"lake": config.LakeSettings(root=tmp_path)})
    session = requests.Session()
    creds = sandbox.credentials["mixpanel"]
    session.auth = (creds["username"], creds["secret"])
    result = pipeline.extract(cfg, "mixpanel", DAY, session, sandbox.base_url)
    assert result["profiles"] == {"looked_up": 1, "found": 1}  # only u1 lacked an email
    again = pipeline.extract(cfg, "mixpanel", DAY, session, sandbox.base_url)
    assert again["profiles"] == {"looked_up": 0, "found": 0}  # not asked twice

    lake = Lake(tmp_path)
    f = user_features(
        lake.events_glob(),
        datetime(2026, 10, 6, tzinfo=UTC),
        cfg.features,
        cfg.identity.free_email_domains,
        profiles=str(tmp_path / "identity" / "*" / "profiles.parquet"),
        model=cfg.model,
    )
    f = f.set_index("user_key")
    assert list(f.index) == ["u1", "u2"]  # dev9 never signed up: not a user
    assert f.loc["u1", "email"] == "ana@acme.io" and f.loc["u2", "email"] == "bo@beta.dev"
    assert f.loc["u1", "first_seen"].hour == 8  # the anonymous visit before sign-up counts
    pricing = next(
        i
        for i, s in enumerate(cfg.model.signals)
        if getattr(s, "event", None) == "Pricing Page Viewed"
    )
    assert f.loc["u1", f"s{pricing}"] == 1
    # As of before the identify, the anonymous visit belongs to nobody yet.
    early = user_features(
        lake.events_glob(),
        datetime(2026, 10, 5, 8, 30, tzinfo=UTC),
        cfg.features,
        cfg.identity.free_email_domains,
    )
    assert early.empty
    assert timedelta(0) < f.loc["u1", "last_seen"] - f.loc["u1", "first_seen"]
