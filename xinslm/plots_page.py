"""The page of `dvc plots show` and `dvc plots diff` on a machine without internet: DVC's HTML
template (the `plots.html_template` setting in .dvc/config: .dvc/plots.html) with Vega,
Vega-Lite and Vega-Embed inlined, where DVC's own page loads them from a CDN.

The scripts come from the vl-convert-python package: it is the Vega project's own packaging
of these libraries for Python, released with each Vega-Lite version, and its
`javascript_bundle` builds one script of all three from the copies inside its wheel, without
a network. (altair_viewer, the other package that ships them, stopped at Vega-Lite 4; DVC's
charts are Vega-Lite 5 specs.) The template is written after the install (`make` runs
`python -m xinslm.plots_page`), not committed: it is 900 KB of another project's code, and
its version follows the installed package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xinslm.atomic import atomic_file
from xinslm.errors import XinslmError, run_main

TEMPLATE = Path(".dvc/plots.html")
VEGA_LITE = "5.21"  # DVC's chart templates are Vega-Lite 5 specs
# DVC fills these by plain text replacement, so the inlined scripts must not hold them.
# {scripts} is left out on purpose: there DVC would put its CDN <script> tags.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>xinslm: curves</title>
<style>
  body { font-family: sans-serif; margin: 16px; }
  main { display: flex; flex-wrap: wrap; gap: 8px 24px; }
</style>
<script>
BUNDLE
</script>
</head>
<body>
<main>
{plot_divs}
</main>
</body>
</html>
"""


def bundle() -> tuple[str, str]:
    """The one script of Vega, Vega-Lite and Vega-Embed (as the globals DVC's page calls), and
    the versions it holds."""
    try:
        import vl_convert
    except ImportError:
        raise XinslmError(
            "vl-convert-python is not installed (it is one of xinslm's dependencies: "
            "pip install -e .); it holds the scripts the plots page draws with"
        ) from None
    script = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    versions = (
        f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, "
        f"Vega-Embed {vl_convert.get_vega_embed_version()}"
    )
    return script, versions


def page_template() -> tuple[str, str]:
    """DVC's HTML template with the scripts inlined, and the versions of the scripts."""
    script, versions = bundle()
    script = script.replace("</script", "<\\/script")  # it must not end the <script> early
    clash = [p for p in PLACEHOLDERS if p in script]
    if clash:
        raise XinslmError(f"the Vega bundle holds DVC's placeholder {clash[0]}: cannot inline it")
    return PAGE.replace("BUNDLE", script), versions


def write_template(path: str | Path = TEMPLATE) -> str:
    """Write the template to `path` (atomically); return the versions of its scripts."""
    html, versions = page_template()
    with atomic_file(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(TEMPLATE), help="where to write it")
    path = parser.parse_args().path
    versions = write_template(path)
    print(f"plots page template: {path} ({versions}, inlined: no network needed)")


if __name__ == "__main__":
    run_main(main)
