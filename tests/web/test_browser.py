"""The web app in a real browser: Playwright driving Debian's Chromium (no browser download) against
`flenwheel serve` on loopback, on SQLite. One server and one browser for the module; the tests run in order
through a character's life (sign in, create from a spec, upload real photos, curate, review with the keyboard,
build and download a dataset, train on the tiny model, evaluate, generate in the studio), and a second user
sees none of it. Every screen is saved as a screenshot under test-artifacts/browser/ (git-ignored)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from flenwheel.config import Settings
from flenwheel.store.project import Project
from flenwheel.web.auth import add_user

from patience import HANG_S
from photos import FACES, LISA

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path(os.environ.get("FLENWHEEL_CHROMIUM", "/usr/bin/chromium"))
# Chromium's own background connections (updates, sync, field trials) are refused on these machines and
# would slow every page; none of them is needed to drive a page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLENWHEEL = Path(sys.executable).parent / "flenwheel"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"  # installed by scripts/setup (npm ci)
SERIOUS = ("serious", "critical")
WAIT_MS = HANG_S * 1000  # waits end on the real condition; this only stops a hung run
PHOTOS = [*LISA[:4]]
NOT_A_PHOTO = FACES / "ATTRIBUTION.md"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: run scripts/setup")


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLENWHEEL_")}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


@dataclass
class App:
    base: str
    project: Path
    tokens: dict[str, str]
    browser: object
    log: list[str]
    state: dict[str, object] = field(default_factory=dict)

    def shot(self, page: object, name: str) -> None:
        """Save the screen, and check it with axe-core: its serious and critical violations are kept for
        the last test to report (all screens at once)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]
        page.add_script_tag(path=str(AXE))  # type: ignore[attr-defined]
        violations = page.evaluate(  # type: ignore[attr-defined]
            """() => axe.run(document, {resultTypes: ["violations"]}).then(r => r.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))})))"""
        )
        serious = [v for v in violations if v["impact"] in SERIOUS]
        self.state.setdefault("axe", {})[name] = serious  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    project = tmp_path_factory.mktemp("browser") / "project"
    made = Project.init(Settings(project=project))
    tokens = {name: add_user(made, name)[1] for name in ("alice", "bob")}
    made.close()
    server = subprocess.Popen(
        [str(FLENWHEEL), "--project", str(project), "serve", "--port", "0", "--workers", "2"],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    assert server.stderr is not None
    for line in server.stderr:
        log.append(line)
        if listening := re.search(r"Uvicorn running on (http://\S+)", line):
            base = listening.group(1)
            break
    else:
        pytest.fail(f"flenwheel serve stopped before listening:\n{''.join(log)}")
    threading.Thread(target=log.extend, args=(server.stderr,), daemon=True).start()
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield App(base, project, tokens, browser, log)
        finally:
            browser.close()
            server.terminate()
            server.wait(timeout=HANG_S)
    assert "Traceback" not in "".join(log), "".join(log)


def _page(app: App, user: str | None = "alice", width: int = 1280) -> object:
    context = app.browser.new_context(base_url=app.base, viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    if user is not None:
        page.goto("/signin")
        page.get_by_label("API token").fill(app.tokens[user])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{app.base}/")
    return page


def _images_render(page: object, selector: str) -> list[int]:
    """naturalWidth of every image under `selector`, once each has loaded (0 = a broken image)."""
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        selector,
        """imgs => Promise.all(imgs.map(img => img.decode().then(() => img.naturalWidth, () => 0)))""",
    )


# A failed job, a form's error, or the page's error toast (a refused API call): a wait ends on these too.
FAILED = (
    'li[data-job][data-status="failed"], li[data-job][data-status="interrupted"], form p.error, #toast.error'
)


def _wait_for(page: object, selector: str) -> None:
    """Wait until `selector` shows, or a job on the page fails (then fail with the job's error)."""
    page.locator(f"{selector}, {FAILED}").first.wait_for()  # type: ignore[attr-defined]
    failed = page.locator(FAILED)  # type: ignore[attr-defined]
    assert failed.count() == 0, failed.first.inner_text()


def test_sign_in_refuses_a_wrong_token_then_creates_a_character_from_a_spec(app: App) -> None:
    page = _page(app, user=None)
    page.goto("/")
    assert page.url.startswith(f"{app.base}/signin")  # no session: the sign-in page
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert "not known" in page.get_by_role("alert").inner_text()
    app.shot(page, "01-signin-error")
    page.get_by_label("API token").fill(app.tokens["alice"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{app.base}/")
    cookie = next(c for c in page.context.cookies() if c["name"] == "flenwheel_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    page.get_by_label("Name").fill("Lisa")
    page.get_by_label("Hair colour").fill("auburn")
    page.get_by_label("Budget (USD)").fill("lots")
    page.get_by_role("button", name="Create character").click()
    assert "not a number of dollars" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Hair colour").input_value() == "auburn"  # nothing typed is lost
    page.get_by_label("Budget (USD)").fill("7.5")
    page.get_by_role("button", name="Create character").click()
    page.wait_for_url(re.compile(r"/c/\d+$"))
    app.state["character"] = int(page.url.rsplit("/", 1)[1])
    page.goto("/")
    assert "spent $0.00 of $7.50" in page.locator("ul.characters").inner_text()
    app.shot(page, "02-characters")


def test_upload_curate_review_with_the_keyboard_and_download_a_dataset(app: App) -> None:
    character = app.state["character"]
    page = _page(app)
    page.goto(f"/c/{character}")
    page.set_input_files("#files", [*map(str, PHOTOS), str(NOT_A_PHOTO)])
    results = page.locator("#upload-results")
    results.get_by_text("4 added, 0 duplicate, 1 rejected").wait_for()
    assert "ATTRIBUTION.md: rejected" in results.inner_text()  # a per-file error; the batch went on
    page.locator("#grid .tile").nth(3).wait_for()
    assert page.locator("#grid .tile").count() == 4
    widths = _images_render(page, "#grid .tile img")
    assert len(widths) == 4 and all(0 < w <= 256 for w in widths), widths  # real pixels, thumbnails only

    version = int(page.evaluate("Number(document.body.dataset.gridVersion || 0)"))
    page.get_by_role("button", name="Run curate").click()
    _wait_for(page, 'li[data-job][data-status="succeeded"]')
    page.locator(f'body[data-grid-version="{version + 1}"]').wait_for()  # the grid came back after curate
    assert page.locator("#grid .tile .identity:not(.na)").count() == 4  # each photo measured
    # Each tile: the measured distance against the threshold the gate used.
    assert re.search(r"identity \d\.\d{3} [≤>] \d\.\d{2}", page.locator("#grid .tile").first.inner_text())

    tiles = page.locator("#grid .tile")
    tiles.nth(0).focus()
    page.keyboard.press("g")
    _wait_for(page, "#grid .tile:nth-child(1) .label.good")
    page.keyboard.press("ArrowRight")
    assert tiles.nth(1).evaluate("t => t === document.activeElement")
    page.keyboard.press("r")
    page.get_by_label("Reason for").fill("eyes closed")
    page.keyboard.press("Enter")
    _wait_for(page, "#grid .tile:nth-child(2) .label.reject")
    assert tiles.nth(1).locator(".reason").inner_text() == "eyes closed"
    page.keyboard.press("u")  # undo: curate's suggestion is current again
    _wait_for(page, "#grid .tile:nth-child(2) .label.good")
    for index in (1, 2, 3):
        tiles.nth(index).focus()
        page.keyboard.press("g")
        _wait_for(page, f"#grid .tile:nth-child({index + 1}) .label.good")
    page.keyboard.press("Enter")
    page.locator("#provenance:not([hidden])").get_by_text("Open the full-size image").wait_for()
    app.shot(page, "03-photos-review")
    page.set_viewport_size({"width": 390, "height": 844})
    app.shot(page, "03b-photos-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("button", name="Build dataset version").click()
    page.wait_for_url(re.compile(r"/datasets\?built=v1"))
    assert "v1 · 4 images" in page.locator("main").inner_text()
    with page.expect_download() as download:
        page.get_by_role("link", name="zip zip").click()
    names = zipfile.ZipFile(download.value.path()).namelist()
    assert "metadata.json" in names and sum(n.endswith(".jpg") or n.endswith(".png") for n in names) == 4
    app.shot(page, "04-datasets")


def test_train_on_the_tiny_model_evaluate_and_generate_in_the_studio(app: App) -> None:
    character = app.state["character"]
    page = _page(app)
    page.goto(f"/c/{character}/runs")
    page.get_by_label("Epochs").fill("2")
    page.get_by_role("button", name="Start training").click()
    _wait_for(page, "figure.loss svg")  # the page reloads with the run once training is done
    assert "run" in page.locator("section.run h2").first.inner_text()
    assert page.locator("ul.checkpoints li").count() == 2

    page.get_by_label("Prompts").fill("front-neutral")  # 2 checkpoints × 2 strengths × 1 prompt
    page.get_by_label("Strengths").fill("0.8, 1.0")
    page.get_by_label("Image size").fill("64")
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_role("button", name="Evaluate checkpoints").click()
    _wait_for(page, "table.heatmap")
    assert "not measurable" in page.locator("table.heatmap").inner_text()  # the tiny model draws no faces
    assert all(w > 0 for w in _images_render(page, "table.heatmap img"))
    app.shot(page, "05-runs-evaluation")
    page.get_by_label("Strength for the studio").fill("0.8")
    page.get_by_role("button", name=re.compile("Use checkpoint")).last.click()
    page.get_by_text("active at strength 0.8").wait_for()  # the user's own choice of checkpoint and strength

    page.goto(f"/c/{character}/studio")
    page.get_by_label("Prompt", exact=True).fill("reading in a cafe")
    page.get_by_label("Outfit").fill("a green raincoat")
    page.get_by_text("Image size (advanced)").click()
    page.get_by_label("Width").fill("64")
    page.get_by_label("Height").fill("64")
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_role("button", name="Generate").click()
    _wait_for(page, 'li[data-job][data-status="succeeded"]')
    page.locator("#results .tile img").first.wait_for()
    assert all(w > 0 for w in _images_render(page, "#results .tile img"))
    page.locator("#results .tile").first.click()
    page.locator("#prov-body").get_by_text(re.compile("green raincoat")).first.wait_for()  # its provenance
    assert "lora" in page.locator("p.mode .badge").inner_text()  # drawn with the chosen checkpoint

    # Inpaint under a mask painted on the canvas, then upscale the edit 2×.
    canvas = page.locator("#paint")
    page.wait_for_function("document.getElementById('paint').width > 0")
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=5)
    page.mouse.up()
    page.get_by_label("Edit prompt").fill("a red scarf")
    page.get_by_label("Edit steps").fill("2")
    page.get_by_role("button", name="Edit", exact=True).click()
    _wait_for(page, '#results .tile:has-text("edited")')
    page.locator("#results .tile", has_text="edited").first.click()
    page.get_by_role("button", name="Upscale 2×").click()
    _wait_for(page, '#results .tile:has-text("upscaled")')
    assert all(w > 0 for w in _images_render(page, "#results .tile img"))
    app.shot(page, "06-studio")

    # One flywheel round with the active checkpoint: the tiny model draws no faces, so the round says so
    page.goto(f"/c/{character}/flywheel")
    page.get_by_label("Prompts per round").fill("1")
    page.get_by_label("Variants per prompt").fill("1")
    page.get_by_role("button", name="Run the flywheel").click()
    _wait_for(page, 'section.card h2:has-text("Round 1")')
    round_one = page.locator("section.card", has_text="Round 1").first.inner_text()
    assert "1 candidates drawn" in round_one and "not measurable" in round_one.lower(), round_one
    app.shot(page, "06b-flywheel")

    page.goto("/activity")
    kinds = page.locator("li[data-job] strong").all_inner_texts()
    assert {"curate", "train", "evaluate", "studio_generate", "flywheel"} <= set(kinds)
    assert "0/0" not in page.locator("#jobs").inner_text()
    app.shot(page, "07-jobs")


def _draw(form: object) -> None:
    """Submit one of the wizard's job forms at 64 px and 2 steps (the tiny model)."""
    form.get_by_text("Image size (advanced)").click()  # type: ignore[attr-defined]
    for label, value in (("Width", "64"), ("Height", "64"), ("Steps", "2")):
        form.get_by_label(label).fill(value)  # type: ignore[attr-defined]
    form.get_by_role("button").last.click()  # type: ignore[attr-defined]


def test_the_wizard_draws_three_bases_then_pick_skin_pass_and_profile_set(app: App) -> None:
    character = app.state["character"]
    page = _page(app)
    page.goto(f"/c/{character}/wizard")
    _draw(page.locator("form[data-kind=base_images]"))
    _wait_for(page, "button.pick-base")  # the page comes back with the three bases to pick from
    assert page.locator("button.pick-base").count() == 3
    page.locator("button.pick-base").nth(1).click()
    page.locator("figure.picked").first.wait_for()
    _draw(page.locator("form[data-kind=skin_pass]"))
    _wait_for(page, ".before-after")  # before / after, with the identity check's verdict
    assert "identity" in page.locator(".before-after").inner_text()
    _draw(page.locator("form[data-kind=profile_set]"))
    _wait_for(page, "#profile-landing + .grid figure")
    assert page.locator("#profile-landing + .grid figure").count() >= 7  # seed 003: 7–10 positions
    profiles = page.locator("#profile-landing + .grid figure")
    count, first = profiles.count(), profiles.first
    position = first.locator("figcaption").inner_text()
    before = first.locator("img").get_attribute("src")
    first.get_by_role("button").click()  # redraw one position
    figure = f'#profile-landing + .grid figure:has(figcaption:text-is("{position}"))'
    _wait_for(page, f'{figure} img:not([src="{before}"])')  # the page came back with the new image
    assert profiles.count() == count and page.locator(figure).count() == 1  # it replaced the old one
    assert all(w > 0 for w in _images_render(page, "main img"))
    app.shot(page, "08-wizard")

    # The sheet (seed 004): anchors × candidates, the automatic picks, then the user's own pick.
    page.goto(f"/c/{character}/sheet")
    form = page.locator("form[data-kind=sheet]")
    _draw(form)
    _wait_for(page, "figure.picked")
    front = page.locator("section", has=page.locator("h2#anchor-front"))
    assert front.locator("figure").count() >= 2  # K candidates of the anchor
    front.locator("button.pick-anchor").first.click()
    front.locator("figure.picked", has_text="by user").wait_for()
    assert "strength" in page.locator("section", has=page.locator("h2#anchor-front")).inner_text()
    app.shot(page, "08b-sheet")


class TwoDaysAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 2 * 86400


def test_a_second_user_sees_none_of_it_and_an_expired_session_says_so(app: App) -> None:
    character = app.state["character"]
    page = _page(app, "bob")
    assert "No characters yet" in page.locator("main").inner_text()
    page.goto(f"/c/{character}")
    assert "no character" in page.get_by_role("alert").inner_text()  # 404, as for one that does not exist
    page.goto("/activity")
    assert page.locator("li[data-job]").count() == 0
    thumb = page.request.get("/assets/1/thumb")
    assert thumb.status == 404

    # The same session, signed two days ago (sessions last 12 hours).
    key = (app.project / "web_session.key").read_text().strip()
    cookie = next(c for c in page.context.cookies() if c["name"] == "flenwheel_session")
    payload = URLSafeTimedSerializer(key, salt="flenwheel-web-session").loads(cookie["value"])
    old = URLSafeTimedSerializer(key, salt="flenwheel-web-session", signer=TwoDaysAgo).dumps(payload)
    page.context.add_cookies([{**cookie, "value": old}])
    page.goto(f"/c/{character}")
    assert "/signin" in page.url
    assert "session has expired" in page.locator("p.notice").inner_text()
    app.shot(page, "09-expired")

    checked = app.state["axe"]
    assert len(checked) >= 11, sorted(checked)  # type: ignore[arg-type]
    found = {name: v for name, v in checked.items() if v}  # type: ignore[union-attr]
    assert not found, json.dumps(found, indent=1)
