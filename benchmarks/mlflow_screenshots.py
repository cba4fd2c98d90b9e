"""Screenshots of the real MLflow UI over a demo's store, to check what a person sees.

    python -m benchmarks.mlflow_screenshots                      # runs `demo --quick` first
    python -m benchmarks.mlflow_screenshots --demo-dir tracker-sched-demo   # an existing demo

It starts ``mlflow ui`` on 127.0.0.1 (a free port) over the demo's sqlite store, opens
the pages of issue 13's MLflow list in a headless browser and writes one PNG per page
under ``benchmarks/results/mlflow-screens/`` (not committed), with ``screens.json``
listing what each page should show. The browser is Playwright's Chromium where the
``playwright`` package and a browser are installed, else a Chromium binary on PATH
(Debian: ``apt-get install chromium-headless-shell`` or ``chromium``) driven with
``--headless --screenshot``. Without either it says so and exits 2.

The pages: the experiment's training runs in the demo's view (metric columns first) and
the runs table's column list, an advisor run (description, params, tags), its charts
(``tracker_sched.lr_recommended`` beside ``lr``, ``tracker_sched.plan``), its plan as the
artifact viewer shows it (``plan-step<N>.md``), the fit run (split params, only the
``fit.*`` metrics), its ``report.md`` and ``forecast.png``, the registered model and its
version. With Playwright each page is taken once its ``wait_for`` text shows (or after
``--wait-ms``) and the MLflow Assistant panel is closed first where it is open.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from benchmarks.mlflow_server import free_port

OUT = Path(__file__).resolve().parent / "results" / "mlflow-screens"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
WINDOW = (1600, 1000)
COLUMNS_BUTTON = ("[data-component-id$='experiment-page_components_runs_"
                  "experimentviewrunscolumnselector.tsx_315']")
ASSISTANT_CLOSE = "[data-component-id='mlflow.assistant.chat_panel.close']"
HEALTH_S = 240.0  # mlflow ui on a loaded 2-core machine takes a while


@contextlib.contextmanager
def mlflow_ui(store: str, log: Path) -> Iterator[str]:
    """``mlflow ui`` on 127.0.0.1 in its own process group; stopped by its pid."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as fh:
        proc = subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", store,
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEALTH_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited: {log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"mlflow ui did not answer /health in {HEALTH_S:.0f} s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)


def pages(store: str) -> list[dict[str, str]]:
    """The pages to look at, from the store: (name, route, what it should show)."""
    from mlflow.tracking import MlflowClient

    from tracker_sched.demo import ALIAS, EXPERIMENT, MODEL_NAME
    from tracker_sched.demo.view import VIEW_KEY, VIEW_TAG

    client = MlflowClient(store)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise SystemExit(f"no experiment {EXPERIMENT!r} in {store}: run the demo first")
    eid = exp.experiment_id
    runs = client.search_runs([eid], max_results=1000, order_by=["attributes.start_time DESC"])
    kind = {r.info.run_id: r.data.tags.get("tracker_sched.demo") or
            r.data.tags.get("tracker_sched.kind") for r in runs}
    advisor = next(r for r in runs if kind[r.info.run_id] == "advisor")
    fit = next(r for r in runs if kind[r.info.run_id] == "fit")
    version = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    plans = [a.path for a in client.list_artifacts(advisor.info.run_id, "tracker_sched")]
    plan = sorted((p for p in plans if p.endswith(".md")),
                  key=lambda p: int(p.rsplit("step", 1)[-1].split(".")[0]))
    arid, frid = advisor.info.run_id, fit.info.run_id
    view = f"?viewStateShareKey={VIEW_KEY}" if VIEW_TAG in exp.tags else ""
    return [
        {"name": "01-experiment-runs", "route": f"/experiments/{eid}/runs{view}",
         "wait_for": "val_acc",
         "shows": "the training runs (not the GenAI overview) with val_acc, test_acc, "
                  "fit.val_rmse... as the first columns"},
        {"name": "01b-column-list", "route": f"/experiments/{eid}/runs{view}",
         "wait_for": "comparison", "click": COLUMNS_BUTTON,
         "shows": "the column list: Metrics start with fit.* (headline only), then lr, "
                  "test_acc, ..., val_acc; no forecast_rmse.* diagnostics"},
        {"name": "02-advisor-run", "route": f"/experiments/{eid}/runs/{arid}",
         "shows": "the advisor run's description, the same params as the parametric arm, "
                  "tags tracker_sched.registered_model/registered_version"},
        {"name": "03-advisor-charts", "route": f"/experiments/{eid}/runs/{arid}/model-metrics",
         "shows": "lr and tracker_sched.lr_recommended side by side, tracker_sched.plan markers,"
                  " tracker_sched.predicted_final"},
        {"name": "04-plan",
         "route": f"/experiments/{eid}/runs/{arid}/artifactPath/{plan[-1]}" if plan else
         f"/experiments/{eid}/runs/{arid}/artifacts", "wait_for": "Schedule",
         "shows": "the latest plan as tables: status, step, lr now, predicted final, reason, "
                  "then the schedule at 12 steps"},
        {"name": "05-fit-run", "route": f"/experiments/{eid}/runs/{frid}",
         "wait_for": "fit.val_rmse",
         "shows": "the fit's description, params scheme/folds/runs_fit, only fit.* metrics"},
        {"name": "05b-fit-report",
         "route": f"/experiments/{eid}/runs/{frid}/artifactPath/report.md",
         "wait_for": "Forecast RMSE",
         "shows": "report.md: the split, the forecast RMSE table and rank correlations"},
        {"name": "06-forecast-png",
         "route": f"/experiments/{eid}/runs/{frid}/artifactPath/plots/forecast.png",
         "shows": "forecast.png: run names as labels, the out-of-fold title"},
        {"name": "07-model", "route": f"/models/{MODEL_NAME}",
         "shows": "the registered model's description and its versions"},
        {"name": "08-model-version", "route": f"/models/{MODEL_NAME}/versions/{version.version}",
         "shows": "the version's description (split, headline metrics) and its tags"},
    ]


def shoot_cli(binary: str, url: str, png: Path, wait_ms: int) -> None:
    """One screenshot with a Chromium binary's own ``--screenshot``."""
    subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={wait_ms}",
                    f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)


def browser() -> tuple[str, Any]:
    """How to drive a browser: ("playwright", launch options) with Playwright's own
    Chromium or a system one, else ("cli", path of a Chromium binary)."""
    system = [found for name in BROWSERS if (found := shutil.which(name))]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is not None:
        for options in [{}, *({"executable_path": b, "args": ["--no-sandbox"]} for b in system)]:
            try:
                with sync_playwright() as p:
                    p.chromium.launch(**options).close()
                return "playwright", options
            except Exception:
                continue
    if system:
        return "cli", system[0]
    raise SystemExit(
        "no headless browser: install Playwright's Chromium (pip install playwright && "
        "playwright install chromium) or a Chromium binary (Debian: apt-get install "
        "chromium-headless-shell); nothing was captured")


def shoot_playwright(options: dict[str, Any], base: str, todo: list[dict[str, str]],
                     out: Path, wait_ms: int) -> list[dict[str, Any]]:
    """Each page ``wait_ms`` after it has loaded (the UI polls, so the network is never idle)."""
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser_ = p.chromium.launch(**options)
        page = browser_.new_page(viewport={"width": WINDOW[0], "height": WINDOW[1]})
        for item in todo:
            png = out / f"{item['name']}.png"
            try:
                # A new document each time: a hash change alone keeps the last artifact shown.
                page.goto("about:blank")
                page.goto(f"{base}/#{item['route']}", wait_until="load", timeout=120_000)
                if item.get("wait_for"):
                    with contextlib.suppress(Exception):  # not there: the screenshot shows it
                        page.get_by_text(item["wait_for"]).first.wait_for(timeout=wait_ms * 6)
                page.wait_for_timeout(wait_ms)
                _close_assistant(page)
                if item.get("click"):
                    with contextlib.suppress(Exception):
                        page.click(item["click"], timeout=wait_ms)
                        page.wait_for_timeout(2000)
                page.screenshot(path=str(png), full_page=True, timeout=120_000)
                shots.append({**item, "png": str(png), "bytes": png.stat().st_size})
            except Exception as exc:  # a slow page must not cost the others
                shots.append({**item, "error": f"{type(exc).__name__}: {exc}"[:300]})
        browser_.close()
    return shots


def _close_assistant(page: Any) -> None:
    """Close MLflow 3.17's Assistant side panel (it takes a quarter of the window); the UI
    remembers it for the later pages. Best effort: a UI without one is left alone."""
    with contextlib.suppress(Exception):
        close = page.locator(ASSISTANT_CLOSE)
        if close.count() and close.first.is_visible():
            close.first.click(timeout=2000)
            page.wait_for_timeout(500)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo-dir", type=Path, help="an existing demo folder (default: run "
                    "`tracker-sched demo --quick` into the output folder first)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--wait-ms", type=int, default=10000,
                    help="time a page gets to draw after it has loaded")
    ns = ap.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    kind, driver = browser()
    folder = ns.demo_dir
    if folder is None:
        folder = ns.out / "demo"
        if not (folder / "mlflow.db").is_file():
            subprocess.run([sys.executable, "-m", "tracker_sched.cli", "demo", "--quick",
                            "--dir", str(folder), "--no-progress"], check=True)
    store = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    todo = pages(store)
    shots: list[dict[str, Any]] = []
    with mlflow_ui(store, ns.out / "mlflow-ui.log") as base:
        if kind == "playwright":
            shots = shoot_playwright(driver, base, todo, ns.out, ns.wait_ms)
        else:
            for item in todo:
                png = ns.out / f"{item['name']}.png"
                shoot_cli(driver, f"{base}/#{item['route']}", png, ns.wait_ms)
                shots.append({**item, "png": str(png), "bytes": png.stat().st_size})
    report = {"store": store, "browser": f"{kind}: {driver}",
              "screens": shots}
    (ns.out / "screens.json").write_text(json.dumps(report, indent=2))
    for shot in shots:
        if "error" in shot:
            print(f"{shot['name']}: NOT TAKEN ({shot['error']})")
        else:
            print(f"{shot['png']}  ({shot['bytes']:,} bytes): {shot['shows']}")
    print(f"wrote {ns.out / 'screens.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
