"""Pictures of word attributions (`jaxft.explain`'s records): an HTML page and the same picture as a PNG.

One row per explanation (a record has one, or one per label or entity), the explained label and its
probability (or, without one, the output `f(x)`) beside the words. Each word's background is its score
on a diverging scale, green for a word that raised the explained output, red for one that lowered it, white
for none, scaled per row by the row's largest magnitude: colours compare words within a row, not across rows
(each row's scale is printed beside it). A text pair's words follow the text's after a "||".
"""

import html
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

_WHITE, _GREEN, _RED = (255, 255, 255), (26, 152, 80), (215, 48, 39)  # ColorBrewer RdYlGn's ends
_LEGEND = (
    "Green: the word raised the explained output; red: it lowered it. Colours are scaled per row by its "
    "largest |score| (printed as max)."
)


def explanations(record: dict) -> list[dict]:
    """The explanations of one record as rows: `title` (the label, with a NER entity's text), `detail`
    (its probability, else its output), `scale` (the largest |score|), `words` and `pair_words`
    (lists of [word, score]; `pair_words` None for a single text)."""
    attributions, explained = record.get("attributions"), record.get("explanation")
    pairs = record.get("pair_attributions")
    if isinstance(attributions, dict):  # multilabel: by label
        items = [(attributions[k], explained[k], pairs[k] if pairs else None) for k in attributions]
    elif isinstance(explained, list):  # ner: by entity
        items = [(attributions[i], explained[i], pairs[i] if pairs else None) for i in range(len(explained))]
    elif attributions is None:
        items = []
    else:
        items = [(attributions, explained, pairs)]
    rows = []
    for words, info, pair_words in items:
        title = str(info["label"]) + (f": {info['entity']}" if "entity" in info else "")
        if "probability" in info:
            detail = f"p = {info['probability']:.3f}"
        else:
            detail = f"f(x) = {info['output']:.3f}"
        scale = max((abs(s) for _, s in list(words) + list(pair_words or [])), default=0.0)
        rows.append(
            {"title": title, "detail": detail, "scale": scale, "words": words, "pair_words": pair_words}
        )
    return rows


def colour(score: float, scale: float) -> tuple[int, int, int]:
    """The RGB background of a word of `score` in a row whose largest |score| is `scale`."""
    t = max(-1.0, min(1.0, score / scale)) if scale > 0 else 0.0
    end = _GREEN if t > 0 else _RED
    return tuple(round(w + abs(t) * (e - w)) for w, e in zip(_WHITE, end, strict=True))


def _text_colour(score: float, scale: float) -> str:
    return "white" if scale > 0 and abs(score) / scale > 0.65 else "black"


def render_html(records: list[dict], path: str) -> None:
    """Writes an HTML page of `records`' attributions to `path` (one table row per explanation)."""
    lines = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8"><title>jaxft word attributions</title><style>',
        "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse}",
        "td{padding:6px 8px;vertical-align:top;border-bottom:1px solid #ddd}",
        ".w{padding:1px 3px;margin:1px;border-radius:3px;display:inline-block} .sep{margin:0 6px;color:#888}",
        ".d{color:#555;font-size:90%}",
        "</style></head><body>",
        "<h2>Word attributions</h2>",
        f"<p>{html.escape(_LEGEND)}</p>",
        "<table><tr><th>#</th><th>explained</th><th>words</th></tr>",
    ]
    for number, record in enumerate(records):
        for row in explanations(record):
            cells = [_html_words(row["words"], row["scale"])]
            if row["pair_words"] is not None:
                cells += ['<span class="sep">||</span>', _html_words(row["pair_words"], row["scale"])]
            lines.append(
                f"<tr><td>{number}</td><td><b>{html.escape(row['title'])}</b><br>"
                f'<span class="d">{html.escape(row["detail"])}<br>max {row["scale"]:.3g}</span></td>'
                f"<td>{''.join(cells)}</td></tr>"
            )
    lines.append("</table></body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _html_words(words: list, scale: float) -> str:
    spans = []
    for word, score in words:
        r, g, b = colour(score, scale)
        spans.append(
            f'<span class="w" style="background:rgb({r},{g},{b});color:{_text_colour(score, scale)}" '
            f'title="{score:+.4f}">{html.escape(word)}</span>'
        )
    return " ".join(spans)


# The PNG is laid out in points with a monospaced font (DejaVu Sans Mono, shipped with matplotlib), whose
# every character advances 0.602 em: word widths are known without drawing them first.
_FONT, _ADVANCE, _WIDTH, _MARGIN = 10.0, 0.602, 900.0, 12.0
_LINE, _LABEL_CHARS = 1.75 * _FONT, 26


def render_png(records: list[dict], path: str, max_rows: int = 60) -> None:
    """Writes `render_html`'s picture of `records` to `path` as a PNG (its first `max_rows` rows: an
    image taller than that stops being readable, and the page holds them all)."""
    rows = [(number, row) for number, record in enumerate(records) for row in explanations(record)]
    rows = rows[:max_rows]
    label_width = _LABEL_CHARS * _ADVANCE * _FONT
    left, right = _MARGIN + label_width + 8, _WIDTH - _MARGIN
    placed, y = [], _MARGIN + 2.2 * _LINE  # the legend above
    for number, row in rows:
        items = [(w, s) for w, s in row["words"]]
        if row["pair_words"] is not None:
            items += [("||", None)] + [(w, s) for w, s in row["pair_words"]]
        x, top, boxes = left, y, []
        for word, score in items:
            width = len(word) * _ADVANCE * _FONT + 6
            if x + width > right and x > left:
                x, y = left, y + _LINE
            boxes.append((x, y, width, word, score))
            x += width + 4
        placed.append((number, row, top, boxes))
        y = max(y + _LINE, top + 2 * _LINE) + 6
    height = y + _MARGIN
    figure = Figure(figsize=(_WIDTH / 72, height / 72), dpi=144)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, _WIDTH)
    axes.set_ylim(height, 0)
    axes.axis("off")
    text = dict(family="monospace", fontsize=_FONT, va="center", parse_math=False)
    axes.text(_MARGIN, _MARGIN + 0.5 * _LINE, _LEGEND, **{**text, "fontsize": _FONT * 0.9})
    for number, row, top, boxes in placed:
        title = f"{number}. {row['title']}"
        axes.text(_MARGIN, top + _LINE / 2, title[:_LABEL_CHARS], weight="bold", **text)
        detail = f"{row['detail']}  max {row['scale']:.2g}"
        axes.text(_MARGIN, top + 1.5 * _LINE, detail[:_LABEL_CHARS], color="#555555", **text)
        for x, line_y, width, word, score in boxes:
            if score is None:
                axes.text(x + 3, line_y + _LINE / 2, word, color="#888888", **text)
                continue
            r, g, b = colour(score, row["scale"])
            axes.add_patch(
                Rectangle((x, line_y + 2), width, _LINE - 4, facecolor=(r / 255, g / 255, b / 255))
            )
            axes.text(x + 3, line_y + _LINE / 2, word, color=_text_colour(score, row["scale"]), **text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=144, facecolor="white")
