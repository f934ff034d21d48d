"""Doc checks for what a new user reads first (issue 17, items 13-15), where there is no behaviour to test: the
Quickstart writes inside demo/, the demo's time is the measured one and the install shows its steps, and the
headless QGIS recipe puts the profile's plugins folder on sys.path before importing from it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    return README[start:README.index("\n## ", start + 1)]


def test_the_quickstart_writes_its_map_under_demo():
    quickstart = section("Quickstart")
    first_steps = quickstart.split("```")[1]  # what a new user runs in the repository (the rest are templates)
    assert re.findall(r"translate .* -o (\S+)", first_steps) == ["demo/my_map.tif"]
    assert "Open `demo/my_map.tif`" in quickstart


def test_the_demo_time_is_the_measured_one_and_the_install_shows_its_steps():
    assert "about 6 min on 2 CPU cores" in section("Quickstart")
    makefile = (REPO / "Makefile").read_text()
    install = makefile[makefile.index("$(STAMP): pyproject.toml"):makefile.index("touch $(STAMP)")]
    assert re.findall(r'@echo "== (\d)/3', install) == ["1", "2", "3"]
    assert "pip install -q $(TORCH)" not in install and "pip install -q -e" not in install  # pip's progress shows


def test_the_headless_qgis_recipe_puts_the_plugins_folder_on_sys_path_before_the_import():
    qgis = section("Use it from QGIS")
    imported = qgis.index("from geo_sat2map_qgis.headless import start_qgis")
    assert 'sys.path.insert(0, "PROFILES/NAME/python/plugins")' in qgis[:imported]
