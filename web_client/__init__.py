"""The browser demo client: static files (index.html, app.js, style.css) served by `lipstream serve`."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
