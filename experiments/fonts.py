"""The CJK font of the distribution (Noto Sans CJK), for figures and embedded in report.html.

Japanese and Korean text needs a font that has its glyphs; without one, browsers and matplotlib
draw empty boxes. The report embeds a subset of Noto Sans CJK (only the characters the page
uses, as an OpenType ``data:`` URI) so that it reads the same on any machine; figures register
the same font with matplotlib. The font comes from the distribution (Debian/Ubuntu
``fonts-noto-cjk``); :func:`require` says how to install it when it is missing.
"""

from __future__ import annotations

import base64
import functools
import io
import shutil
import subprocess
from pathlib import Path

from analysis.errors import UserError

FONT_DIRS = (
    Path("/usr/share/fonts/opentype/noto"),
    Path("/usr/share/fonts/noto-cjk"),
    Path("/usr/share/fonts/google-noto-cjk"),
    Path("/usr/share/fonts/truetype/noto"),
)
FONT_FILE = "NotoSansCJK-Regular.ttc"
# Faces of NotoSansCJK-Regular.ttc: the regional forms of the same glyph set.
SANS_FACE = {"en": 0, "ja": 0, "ko": 1}
MONO_FACE = {"en": 5, "ja": 5, "ko": 6}
FAMILY = {"en": "Noto Sans CJK JP", "ja": "Noto Sans CJK JP", "ko": "Noto Sans CJK KR"}
CSS_SANS = "TrialfedSans"
CSS_MONO = "TrialfedMono"


@functools.cache
def cjk_font() -> Path | None:
    """Path of Noto Sans CJK Regular (a TrueType collection), or None when not installed."""
    for folder in FONT_DIRS:
        if (folder / FONT_FILE).is_file():
            return folder / FONT_FILE
    if shutil.which("fc-match"):
        out = subprocess.run(
            ["fc-match", "-f", "%{file}", "Noto Sans CJK JP:style=Regular"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        found = Path(out.stdout.strip())
        if out.returncode == 0 and found.name == FONT_FILE and found.is_file():
            return found
    return None


def require(lang: str) -> None:
    """Raise UserError when ``lang`` needs the CJK font and it is not installed."""
    if lang != "en" and cjk_font() is None:
        raise UserError(
            f"--lang {lang} needs the Noto Sans CJK font ({FONT_FILE}) for figures and the "
            "report; install it (Debian/Ubuntu: apt-get install fonts-noto-cjk) or use --lang en"
        )


@functools.cache
def register_matplotlib() -> bool:
    """Make the CJK font known to matplotlib; False when it is not installed."""
    path = cjk_font()
    if path is None:
        return False
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(path))
    bold = path.with_name(FONT_FILE.replace("Regular", "Bold"))
    if bold.is_file():  # headings; without it matplotlib thickens nothing and says so
        font_manager.fontManager.addfont(str(bold))
    return True


def matplotlib_families(lang: str) -> list[str]:
    """``font.family`` for figures in ``lang``: the CJK font first for Japanese and Korean,
    as fallback (site names, arm labels in CJK) for English."""
    if not register_matplotlib():
        return ["DejaVu Sans"]
    if lang == "en":
        return ["DejaVu Sans", FAMILY["en"]]
    return [FAMILY[lang], "DejaVu Sans"]


def subset_font(text: str, face: int) -> bytes:
    """Face ``face`` of the CJK collection reduced to the glyphs of ``text`` (OpenType CFF)."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    path = cjk_font()
    if path is None:
        raise UserError(
            f"the CJK font {FONT_FILE} is not installed (apt-get install fonts-noto-cjk)"
        )
    font = TTFont(str(path), fontNumber=face)
    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


def covered(font: bytes) -> set[int]:
    """Code points a font file maps to a glyph."""
    from fontTools.ttLib import TTFont

    return set(TTFont(io.BytesIO(font)).getBestCmap())


def font_face_css(text: str, lang: str) -> str:
    """``@font-face`` rules embedding the sans and mono faces subset to ``text`` ("" when the
    font is not installed)."""
    if cjk_font() is None:
        return ""
    rules = []
    for family, face in ((CSS_SANS, SANS_FACE[lang]), (CSS_MONO, MONO_FACE[lang])):
        data = base64.b64encode(subset_font(text, face)).decode("ascii")
        rules.append(
            f"@font-face{{font-family:{family};"
            f"src:url(data:font/otf;base64,{data}) format('opentype');}}"
        )
    return "".join(rules)
