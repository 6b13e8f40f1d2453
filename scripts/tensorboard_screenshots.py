"""Screenshots of TensorBoard's views of a folder of runs, taken by headless Chromium, to see what users see.

    python scripts/tensorboard_screenshots.py outputs/sweeps/<sweep> --out docs/tensorboard

Starts TensorBoard on a free port in this process, lets Chromium (`chromium`, or --browser) render the Time
Series, Scalars and HParams views at 1600x1000, and writes <view>.png into --out. Needs a Chromium: on Debian
and Ubuntu `apt-get install chromium`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tensorboard import program

VIEWS = ("timeseries", "scalars", "hparams")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", type=Path, help="a sweep folder, or outputs/ for every run")
    parser.add_argument("--out", type=Path, default=Path("tensorboard_screenshots"), help="where the PNGs go")
    parser.add_argument("--browser", default="chromium", help="a Chromium or Chrome executable")
    args = parser.parse_args()
    browser = shutil.which(args.browser)
    if browser is None:
        sys.exit(f"error: {args.browser} not found; install Chromium (apt-get install chromium) or pass --browser")
    if not args.logdir.is_dir():
        sys.exit(f"error: {args.logdir} is not a folder; pass a sweep folder or outputs/")
    args.out.mkdir(parents=True, exist_ok=True)

    tensorboard = program.TensorBoard()
    tensorboard.configure(argv=[None, "--logdir", str(args.logdir), "--port", "0", "--load_fast", "false"])
    url = tensorboard.launch()  # serves from a daemon thread until this script ends
    time.sleep(3)  # TensorBoard reads the event files in the background
    urllib.request.urlopen(url, timeout=30).close()
    for view in VIEWS:
        png = args.out / f"{view}.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # as root in containers and CI
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1600,1000",
                "--virtual-time-budget=15000",  # lets the page load its data before the picture is taken
                f"--screenshot={png.resolve()}",
                f"{url}#{view}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(png)


if __name__ == "__main__":
    main()
