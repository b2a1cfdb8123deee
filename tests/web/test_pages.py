"""The web app's page handlers and its session, without a browser (tests/web/test_browser.py drives the pages
in Chromium): sign-in and its CSRF, the cookie, CSRF on every change made with the cookie, ownership, an
expired or replaced session, thumbnails made once, undo of a label."""

from __future__ import annotations

import re
import time

from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from webapi import Api

from flenwheel.web.auth import new_user_token
from flenwheel.web.session import COOKIE, KEY_FILE
from flenwheel.web.thumbs import thumbnail_path

from photos import LISA


def _sign_in(api: Api, headers: dict[str, str]) -> str:
    """Sign the test client in with a user's token; returns the page's CSRF token."""
    client = api.client
    client.cookies.clear()
    form = client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    token = headers["Authorization"].removeprefix("Bearer ")
    signed = client.post("/signin", data={"token": token, "csrf": csrf.group(1)}, follow_redirects=False)
    assert signed.status_code == 303, signed.text
    return _page_csrf(client.get("/").text)


def _page_csrf(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found is not None and found.group(1)
    return found.group(1)


def test_sign_in_needs_its_form_token_and_sets_an_http_only_same_site_cookie(sqlite_api: Api) -> None:
    client = sqlite_api.client
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/signin")
    token = sqlite_api.alice["Authorization"].removeprefix("Bearer ")
    forged = client.post("/signin", data={"token": token, "csrf": "guess"}, follow_redirects=False)
    assert forged.status_code == 403 and COOKIE not in forged.cookies  # login CSRF refused
    form = client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    wrong = client.post("/signin", data={"token": "nope", "csrf": csrf})
    assert wrong.status_code == 401 and "not known" in wrong.text
    signed = client.post(
        "/signin", data={"token": token, "csrf": csrf, "next": "//evil.example/x"}, follow_redirects=False
    )
    assert signed.headers["location"] == "/"  # never sent to another site after sign-in
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and token not in cookie


def test_changes_made_with_the_cookie_need_the_pages_csrf_token(sqlite_api: Api) -> None:
    character = sqlite_api.character()
    csrf = _sign_in(sqlite_api, sqlite_api.alice)
    client = sqlite_api.client
    files = [("files", (LISA[0].name, LISA[0].read_bytes(), "image/jpeg"))]
    assert client.post(f"/characters/{character}/assets", files=files).status_code == 403
    assert (
        client.post(f"/characters/{character}/assets", files=files, headers={"X-CSRF-Token": "x"}).status_code
        == 403
    )
    uploaded = client.post(f"/characters/{character}/assets", files=files, headers={"X-CSRF-Token": csrf})
    assert uploaded.status_code == 200
    assert client.get(f"/characters/{character}/assets").json()["total"] == 1  # reading needs no token
    build = client.post(f"/c/{character}/datasets", data={"csrf": "stale"})
    assert build.status_code == 403 and "reload the page" in build.text and "<html" in build.text
    created = client.post("/c/new", data={"csrf": "stale", "name": "eve"})
    assert created.status_code == 403
    signed_out = client.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert signed_out.status_code == 303


def test_another_users_character_is_a_404_page_and_the_api_stays_closed(sqlite_api: Api) -> None:
    character = sqlite_api.character()
    asset = sqlite_api.upload(character, LISA[0])["results"][0]["asset_id"]
    _sign_in(sqlite_api, sqlite_api.bob)
    client = sqlite_api.client
    for path in (
        f"/c/{character}",
        f"/c/{character}/runs",
        f"/c/{character}/studio",
        f"/c/{character}/datasets",
        f"/c/{character}/wizard",
        f"/c/{character}/flywheel",
        f"/c/{character}/sheet",
        "/c/99999999999",
    ):
        page = client.get(path)
        assert page.status_code == 404 and "<html" in page.text, path
        assert "Traceback" not in page.text
    assert client.get(f"/assets/{asset}/thumb").status_code == 404
    assert "lisa" not in client.get("/").text
    assert client.get("/activity").status_code == 200


def test_an_expired_or_replaced_session_sends_the_user_to_sign_in_and_says_why(sqlite_api: Api) -> None:
    _sign_in(sqlite_api, sqlite_api.alice)
    client = sqlite_api.client
    key = (sqlite_api.project.root / KEY_FILE).read_text().strip()
    value = client.cookies[COOKIE]
    payload = URLSafeTimedSerializer(key, salt="flenwheel-web-session").loads(value)

    class TwoDaysAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 2 * 86400

    client.cookies.clear()
    client.cookies.set(
        COOKIE, URLSafeTimedSerializer(key, salt="flenwheel-web-session", signer=TwoDaysAgo).dumps(payload)
    )
    gone = client.get("/activity", follow_redirects=False)
    assert gone.status_code == 303 and "why=expired" in gone.headers["location"]
    assert "session has expired" in client.get(gone.headers["location"]).text
    api_call = client.get("/jobs")
    assert api_call.status_code == 401 and "expired" in api_call.json()["detail"]

    _sign_in(sqlite_api, sqlite_api.alice)
    new_user_token(sqlite_api.project, "alice")  # the token is replaced: its sessions end
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set(COOKIE, "forged.value.here")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_create_form_reports_bad_values_and_keeps_what_was_typed(sqlite_api: Api) -> None:
    csrf = _sign_in(sqlite_api, sqlite_api.alice)
    client = sqlite_api.client
    bad = client.post(
        "/c/new", data={"csrf": csrf, "name": "", "hair_colour": "auburn", "budget_usd": "1e999x"}
    )
    assert bad.status_code == 422 and "not a number of dollars" in bad.text and 'value="auburn"' in bad.text
    made = client.post(
        "/c/new", data={"csrf": csrf, "name": "Mia <b>", "budget_usd": "3"}, follow_redirects=False
    )
    assert made.status_code == 422 and "<b>" not in made.text  # a bad name is refused, and escaped when shown
    made = client.post(
        "/c/new", data={"csrf": csrf, "name": "Mia", "budget_usd": "3", "nsfw": "on"}, follow_redirects=False
    )
    assert made.status_code == 303
    character = client.get(f"/characters/{made.headers['location'].rsplit('/', 1)[1]}").json()
    assert character["budget_usd"] == 3 and character["nsfw"] is True and character["spec"]["name"] == "Mia"


def test_thumbnails_are_small_webp_made_once_and_undo_restores_the_previous_label(sqlite_api: Api) -> None:
    character = sqlite_api.character()
    asset = sqlite_api.upload(character, LISA[0])["results"][0]["asset_id"]
    client, alice = sqlite_api.client, sqlite_api.alice
    first = client.get(f"/assets/{asset}/thumb", headers=alice)
    assert first.headers["content-type"] == "image/webp" and first.content[8:12] == b"WEBP"
    sha = client.get(f"/assets/{asset}", headers=alice).json()["sha256"]
    cached = thumbnail_path(sqlite_api.project, sha)
    made_at = cached.stat().st_mtime_ns
    again = client.get(f"/assets/{asset}/thumb", headers=alice)
    assert again.content == first.content and cached.stat().st_mtime_ns == made_at
    etag = client.get(f"/assets/{asset}/thumb", headers={**alice, "If-None-Match": first.headers["etag"]})
    assert etag.status_code == 304

    import io

    from PIL import Image

    assert max(Image.open(io.BytesIO(first.content)).size) == 256

    assert (
        client.delete(f"/assets/{asset}/reviews/latest", headers=alice).status_code == 400
    )  # nothing to undo
    for label, reason in (("good", ""), ("reject", "eyes closed")):
        client.post(f"/assets/{asset}/reviews", json={"label": label, "reason": reason}, headers=alice)
    undone = client.delete(f"/assets/{asset}/reviews/latest", headers=alice)
    assert undone.status_code == 200 and undone.json()["label"] == "good"
    assert client.delete(f"/assets/{asset}/reviews/latest", headers=sqlite_api.bob).status_code == 404


def test_every_screen_renders_for_its_owner(sqlite_api: Api) -> None:
    character = sqlite_api.character()
    sqlite_api.upload(character, LISA[0])
    _sign_in(sqlite_api, sqlite_api.alice)
    for path in (
        "/",
        "/activity",
        *(
            f"/c/{character}{tab}"
            for tab in ("", "/datasets", "/runs", "/studio", "/wizard", "/flywheel", "/sheet")
        ),
    ):
        page = sqlite_api.client.get(path)
        assert page.status_code == 200, path
        assert "lisa" in page.text or path == "/activity", path
    filtered = sqlite_api.client.get(f"/c/{character}?label=none&kind=source&angle=front&page=1")
    assert filtered.status_code == 200 and "0 images" in filtered.text  # not analysed yet: no angle


def test_the_studio_offers_each_configured_engine_and_says_which_keep_nsfw_at_home(sqlite_api: Api) -> None:
    character = sqlite_api.character()
    _sign_in(sqlite_api, sqlite_api.alice)
    page = sqlite_api.client.get(f"/c/{character}/studio").text
    select = re.search(r'<select id="s-engine" name="provider">(.*?)</select>', page, re.S)
    assert select is not None
    options = dict(re.findall(r'<option value="([^"]*)">([^<]*)</option>', select.group(1)))
    assert options[""].startswith("automatic") and "local" in options and "esrgan" in options
    assert "no NSFW" not in options["local"]  # self-hosted


def test_a_training_runs_loss_curve_and_step_follow_it_live(sqlite_api: Api) -> None:
    """The Runs page polls a running run's figures (step, loss curve) without a reload; another user's run is
    a 404, and a finished run is not polled."""
    from flenwheel.store.models import DatasetVersion, TrainingRun

    api = sqlite_api
    character = api.character()
    with api.project.db.session() as db:
        version = DatasetVersion(character_id=character, number=1, composition={})
        db.add(version)
        db.flush()
        run = TrainingRun(
            character_id=character,
            dataset_version_id=version.id,
            trainer="local",
            status="running",
            step=3,
            total_steps=10,
            losses=[[1, 0.5], [2, 0.4], [3, 0.3]],
        )
        db.add(run)
        db.flush()
        run_id = run.id
    _sign_in(api, api.alice)
    page = api.client.get(f"/c/{character}/runs").text
    assert f'data-live="/c/{character}/runs/{run_id}/progress"' in page
    live = api.client.get(f"/c/{character}/runs/{run_id}/progress").json()
    assert (live["status"], live["step"], live["total_steps"], live["points"]) == ("running", 3, 10, 3)
    assert live["last"] == 0.3 and len(live["curve"].split()) == 3
    with api.project.db.session() as db:
        db.get_one(TrainingRun, run_id).losses = [[1, 0.5], [2, 0.4], [3, 0.3], [4, 0.25]]
        db.get_one(TrainingRun, run_id).status = "succeeded"
    later = api.client.get(f"/c/{character}/runs/{run_id}/progress").json()
    assert later["points"] == 4 and later["last"] == 0.25 and later["status"] == "succeeded"
    assert "data-live" not in api.client.get(f"/c/{character}/runs").text
    _sign_in(api, api.bob)
    assert api.client.get(f"/c/{character}/runs/{run_id}/progress").status_code == 404
