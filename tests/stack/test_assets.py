"""The web app's publication (scripts/stack/assets.py): hashed names that change with the
content, imports and index.html rewritten to them, and a broken reference refused."""

from __future__ import annotations

import re

import pytest

from scripts.stack.assets import AssetError, publish_webapp


def make_app(root, *, util="export const x = 1;\n"):
    (root / "js").mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(
        '<link rel="stylesheet" href="app.css"><link rel="icon" href="data:,">'
        '<script type="module" src="js/main.js"></script></head>')
    (root / "app.css").write_text("body { color: black; }\n")
    (root / "js" / "main.js").write_text('import { x } from "./util.js";\nconsole.log(x);\n')
    (root / "js" / "util.js").write_text(util)


def test_assets_get_content_hashes_and_references_follow(tmp_path):
    make_app(tmp_path / "src")
    urls = publish_webapp(tmp_path / "out", tmp_path / "src")
    assert set(urls) == {"app.css", "js/main.js", "js/util.js"}
    assert all(re.fullmatch(r"/assets/\w+\.[0-9a-f]{8}\.(js|css)", url) for url in urls.values())
    html = (tmp_path / "out" / "index.html").read_text()
    assert f'href="{urls["app.css"]}"' in html
    assert f'src="{urls["js/main.js"]}"' in html
    assert f'<link rel="modulepreload" href="{urls["js/util.js"]}">' in html
    assert 'href="data:,"' in html
    main = (tmp_path / "out" / urls["js/main.js"].lstrip("/")).read_text()
    assert f'from "./{urls["js/util.js"].removeprefix("/assets/")}"' in main

    # A change to the imported module renames it and the module importing it; nothing else.
    make_app(tmp_path / "src", util="export const x = 2;\n")
    again = publish_webapp(tmp_path / "out", tmp_path / "src")
    assert again["js/util.js"] != urls["js/util.js"]
    assert again["js/main.js"] != urls["js/main.js"]
    assert again["app.css"] == urls["app.css"]
    assert sorted(p.name for p in (tmp_path / "out" / "assets").iterdir()) == sorted(
        url.removeprefix("/assets/") for url in again.values())


def test_a_missing_import_is_refused(tmp_path):
    make_app(tmp_path / "src", util='import "./nowhere.js";\n')
    with pytest.raises(AssetError, match=r"nowhere\.js"):
        publish_webapp(tmp_path / "out", tmp_path / "src")
