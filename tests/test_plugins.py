"""Plugin backends: a module:attribute spec, or an installed package's entry point."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import REPO, World, run_cli_process

PLUGIN = '''
from tests.stand_in import EchoBackend


class Plugged(EchoBackend):
    """The stand-in under another name, as a third-party package would ship it."""

    def identity(self):
        return {"name": "plugged", "revision": "7"}


class Broken:
    def __init__(self, options):
        pass

    def identity(self):
        return {}
'''


def install_plugin(site: Path) -> None:
    """A distribution on sys.path as pip leaves it: a module plus a dist-info with entry points."""
    site.mkdir(parents=True)
    (site / "myplugin.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "myplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[cobra_eval.backends]\nplugged = myplugin:Plugged\nbroken = myplugin:Broken\n"
    )


def test_an_entry_point_backend_is_found_by_name(world: World) -> None:
    site = world.root / "site"
    install_plugin(site)
    path = f"{site}:{REPO}"
    # a later --backend wins over the stand-in that run_args names
    result = run_cli_process(*world.run_args("--num_samples", "3", "--backend", "plugged"),
                             PYTHONPATH=path)  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert world.rows("SELECT COUNT(*) FROM sample_result WHERE status = 'ok'") == [(3,)]
    (config,) = world.rows("SELECT config FROM run")[0]
    assert '"backend":"plugged"' in config.replace(" ", "")
    assert '"revision":"7"' in config.replace(" ", "")
    broken = run_cli_process(*world.run_args("--backend", "broken"), PYTHONPATH=path)
    assert broken.returncode == 1
    assert "backend 'broken' does not provide generate()" in broken.stderr + broken.stdout
    unknown = run_cli_process(*world.run_args("--backend", "nosuch"), PYTHONPATH=path)
    assert unknown.returncode == 1
    assert "unknown backend 'nosuch' (available:" in unknown.stderr + unknown.stdout
    assert "plugged" in unknown.stderr + unknown.stdout  # installed plugins are listed


def test_a_module_attribute_plugin(world: World, cli) -> None:
    result = cli(*world.run_args("--backend", "tests.test_plugins_module:Plugged"))
    assert result.exit_code == 1 and "cannot import backend module" in result.output
    site = world.root / "site"
    install_plugin(site)
    ok = run_cli_process(
        *world.run_args("--backend", "myplugin:Plugged", "--num_samples", "2"),
        PYTHONPATH=f"{site}:{REPO}",
    )
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(2,)]
